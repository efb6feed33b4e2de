"""The DM management tree (fotadelta.dm.tree): URIs, every server command with its status codes,
ACLs, properties, listings, exec/replace handlers and Atomic snapshots."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fotadelta.dm.tree import DEFAULT_ROOT_ACL, DmTree, NodeData, TreeError, Value

DEVINFO_URN = "urn:oma:mo:oma-dm-devinfo:1.0"


def code_of(call: Callable[..., object], *args: object, **kwargs: object) -> int:
    """The TreeError code a call raises (fails the test if it does not raise)."""
    with pytest.raises(TreeError) as info:
        call(*args, **kwargs)
    return info.value.code


@pytest.fixture
def tree() -> DmTree:
    """A small device tree: DevInfo (read-only), a FUMO object owned by srv1, an open scratch area."""
    t = DmTree()
    t.put("./DevInfo", interior=True, type=DEVINFO_URN, acl="Get=*")
    t.put("./DevInfo/DevId", "IMEI:493005100592800")
    t.put("./DevInfo/Man", "Acme")
    t.put("./DevInfo/Mod", "X1")
    t.put("./FwUpdate", interior=True, acl="Get=*&Add=srv1&Replace=srv1+srv2&Delete=srv1&Exec=srv1")
    t.put("./FwUpdate/x/PkgName", "")
    t.put("./FwUpdate/x/Update/PkgData", None, format="bin", type="application/octet-stream")
    t.put("./FwUpdate/x/State", "10", format="int")
    t.put("./Open", interior=True, acl="Add=*&Get=*&Replace=*&Delete=*&Exec=*")
    return t


def test_tree_error_carries_code_and_message() -> None:
    e = TreeError(404, "gone")
    assert (e.code, e.message, str(e)) == (404, "gone", "404: gone")


# ---- URIs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["", "/", "./", "/A", "A/", "./A/", "./A//B", "..", "./..", "A/../B",
                                 "./A/./B", "./.", "A/."])
def test_malformed_uri_is_400(tree: DmTree, uri: str) -> None:
    assert code_of(tree.exists, uri) == 400
    assert code_of(tree.get, uri, "srv1") == 400
    assert code_of(tree.add, uri, "v", "chr", None, "srv1") == 400


def test_relative_uri_means_absolute(tree: DmTree) -> None:
    assert tree.get("DevInfo/Mod", "s") == tree.get("./DevInfo/Mod", "s")
    assert tree.get("DevInfo/Mod", "s")[0].uri == "./DevInfo/Mod"
    tree.add("Open/rel", "1", "int", None, "s")
    assert tree.value("./Open/rel") == "1"
    assert tree.exists(".") and tree.exists("DevInfo")


def test_depth_limit() -> None:
    t = DmTree(max_depth=2)
    t.put("./A/B", "v")
    assert code_of(t.put, "./A/B/C", "v") == 414
    assert code_of(t.get, "./A/B/C", "s") == 414  # 414 before 404
    assert code_of(t.add, "A/X/Y", "v", "chr", None, "s") == 414


def test_segment_and_total_length_limits() -> None:
    t = DmTree(max_total_len=10, max_segment_len=4)
    t.put("./AAAA/BBB", "v")  # 10 characters, segments of 4: at the limits
    assert code_of(t.put, "./AAAAA", "v") == 414  # segment of 5
    assert code_of(t.exists, "./AAAA/BBBB") == 414  # 11 characters
    assert code_of(t.exists, "AAAA/BBBB") == 414  # relative URIs are measured in their absolute form
    assert t.exists("AAAA/BBB")


def test_zero_limits_mean_unlimited() -> None:
    t = DmTree(max_depth=0, max_total_len=0, max_segment_len=0)
    deep = "./" + "/".join(["n" * 100] * 40)
    t.put(deep, "v")
    assert t.value(deep) == "v"


def test_default_limits() -> None:
    t = DmTree()
    t.put("./" + "/".join("abcdefghijklmnop"), "v")  # 16 levels
    assert code_of(t.exists, "./" + "/".join("abcdefghijklmnopq")) == 414
    assert code_of(t.exists, "./" + "s" * 65) == 414
    assert code_of(t.exists, "./" + "/".join(["s" * 60] * 5)) == 414  # 306 > 256


# ---- device side ---------------------------------------------------------------------------


def test_put_value_children_exists(tree: DmTree) -> None:
    assert tree.value("./DevInfo/Man") == "Acme"
    assert tree.value("./DevInfo") is None
    assert tree.children("./DevInfo") == ["DevId", "Man", "Mod"]
    assert tree.children(".") == ["DevInfo", "FwUpdate", "Open"]
    assert tree.children("./DevInfo/Man") == []
    assert not tree.exists("./Nope")
    assert code_of(tree.value, "./Nope") == 404
    assert code_of(tree.children, "./Nope") == 404


def test_put_creates_parents_as_interior_and_inheriting(tree: DmTree) -> None:
    tree.put("./Open/A/B/C", "v", permanent=False)
    assert tree.get("./Open/A/B", "s")[0] == NodeData("./Open/A/B", "node", None, "C")
    assert tree.get("./Open/A?prop=ACL", "s")[0].data == ""
    tree.delete("./Open/A", "s")  # parents share the leaf's permanence
    tree.put("./Open/P/Q", "v")
    assert code_of(tree.delete, "./Open/P", "s") == 405


def test_put_overwrites_and_keeps_acl_and_children(tree: DmTree) -> None:
    tree.put("./FwUpdate", interior=True, type="urn:oma:mo:oma-fumo:1.0")
    assert tree.children("./FwUpdate") == ["x"]
    assert tree.get("./FwUpdate?prop=ACL", "s")[0].data == "Get=*&Add=srv1&Replace=srv1+srv2&Delete=srv1&Exec=srv1"
    assert tree.get("./FwUpdate?prop=Type", "s")[0].data == "urn:oma:mo:oma-fumo:1.0"
    tree.put("./DevInfo/Mod", "X2", acl="Get=srv9")
    assert tree.value("./DevInfo/Mod") == "X2"
    assert tree.get("./DevInfo/Mod?prop=ACL", "srv9")[0].data == "Get=srv9"
    tree.put("./DevInfo/Mod", "X3", acl="")  # back to inheriting
    assert tree.get("./DevInfo/Mod", "anyone")[0].data == "X3"


def test_put_type_defaults(tree: DmTree) -> None:
    assert tree.get("./DevInfo/Man", "s")[0].type == "text/plain"
    assert tree.get("./DevInfo", "s")[0].type == DEVINFO_URN
    tree.put("./Open/dir", interior=True)
    assert tree.get("./Open/dir", "s")[0].type is None


def test_put_errors(tree: DmTree) -> None:
    assert code_of(tree.put, ".", None) == 405
    assert code_of(tree.put, "./DevInfo/Man/Sub", "v") == 405  # under a leaf
    assert code_of(tree.put, "./DevInfo", "v") == 405  # has children, cannot become a leaf
    assert code_of(tree.put, "./X", "abc", format="int") == 415
    assert code_of(tree.put, "./X", "v", acl="Get") == 400
    assert code_of(tree.put, "./X?prop=ACL", "v") == 400
    assert not tree.exists("./X")


def test_put_leaf_and_interior_swap_when_childless(tree: DmTree) -> None:
    tree.put("./Open/n", "v")
    tree.put("./Open/n", interior=True)
    tree.put("./Open/n/c", "v")
    assert tree.children("./Open/n") == ["c"]
    tree.put("./Open/m", interior=True)
    tree.put("./Open/m", "leaf now")
    assert tree.value("./Open/m") == "leaf now"


def test_root_acl() -> None:
    with pytest.raises(TreeError) as info:
        DmTree(root_acl="")
    assert info.value.code == 400
    with pytest.raises(TreeError) as info:
        DmTree(root_acl="Get")
    assert info.value.code == 400
    t = DmTree(root_acl="Add=*&Get=srv1")
    assert t.get(".?prop=ACL", "srv1")[0].data == "Add=*&Get=srv1"
    assert code_of(t.get, ".", "srv2") == 425
    assert DmTree().get(".?prop=ACL", "x")[0].data == DEFAULT_ROOT_ACL == "Add=*&Get=*&Replace=*"


# ---- Get -----------------------------------------------------------------------------------


def test_get_leaf(tree: DmTree) -> None:
    assert tree.get("./DevInfo/DevId", "srv1") == [
        NodeData("./DevInfo/DevId", "chr", "text/plain", "IMEI:493005100592800")]
    assert tree.get("./FwUpdate/x/State", "srv1") == [NodeData("./FwUpdate/x/State", "int", "text/plain", "10")]
    assert tree.get("./FwUpdate/x/Update/PkgData", "s")[0].data is None


def test_get_interior_lists_children(tree: DmTree) -> None:
    assert tree.get("./DevInfo", "srv1") == [NodeData("./DevInfo", "node", DEVINFO_URN, "DevId/Man/Mod")]
    tree.put("./Open/empty", interior=True)
    assert tree.get("./Open/empty", "srv1")[0].data == ""
    assert tree.get(".", "srv1")[0].data == "DevInfo/FwUpdate/Open"


def test_get_errors(tree: DmTree) -> None:
    assert code_of(tree.get, "./Nope", "srv1") == 404
    tree.put("./Secret", "pin", acl="Get=srv1")
    assert code_of(tree.get, "./Secret", "srv2") == 425
    assert tree.get("./Secret", "srv1")[0].data == "pin"


@pytest.mark.parametrize("query", ["prop=Size", "prop=TStamp", "prop=VerNo", "prop=Title", "prop=acl",
                                   "list=TNDS", "list=struct", "foo", "", "prop=ACL&list=Struct"])
def test_get_unsupported_query_is_406(tree: DmTree, query: str) -> None:
    assert code_of(tree.get, f"./DevInfo?{query}", "srv1") == 406


def test_unsupported_query_checked_before_existence(tree: DmTree) -> None:
    assert code_of(tree.get, "./Nope?prop=Size", "s") == 406
    assert code_of(tree.get, "./Nope?prop=ACL", "s") == 404


def test_get_properties(tree: DmTree) -> None:
    def prop(uri: str) -> Value:
        [nd] = tree.get(uri, "srv1")
        assert (nd.uri, nd.format, nd.type) == (uri, "chr", "text/plain")
        return nd.data

    assert prop("./FwUpdate?prop=ACL") == "Get=*&Add=srv1&Replace=srv1+srv2&Delete=srv1&Exec=srv1"
    assert prop("./FwUpdate/x?prop=ACL") == ""  # inherits: the property itself is empty
    assert prop("./FwUpdate/x/State?prop=Format") == "int"
    assert prop("./FwUpdate/x?prop=Format") == "node"
    assert prop("./FwUpdate/x/Update/PkgData?prop=Type") == "application/octet-stream"
    assert prop("./FwUpdate/x?prop=Type") == ""
    assert prop("./DevInfo?prop=Type") == DEVINFO_URN
    assert prop("./FwUpdate/x/State?prop=Name") == "State"
    assert prop(".?prop=Name") == "."
    assert tree.get("FwUpdate?prop=Name", "s")[0].uri == "./FwUpdate?prop=Name"


def test_get_property_needs_get_right(tree: DmTree) -> None:
    tree.put("./Secret", "pin", acl="Get=srv1")
    assert code_of(tree.get, "./Secret?prop=ACL", "srv2") == 425


def test_list_struct_order_and_content(tree: DmTree) -> None:
    listing = tree.get("./FwUpdate?list=Struct", "srv1")
    assert [n.uri for n in listing] == [
        "./FwUpdate", "./FwUpdate/x", "./FwUpdate/x/PkgName", "./FwUpdate/x/Update",
        "./FwUpdate/x/Update/PkgData", "./FwUpdate/x/State"]
    assert all(n.data is None for n in listing)
    assert [n.format for n in listing] == ["node", "node", "chr", "node", "bin", "int"]
    assert listing[4].type == "application/octet-stream"


def test_list_struct_data(tree: DmTree) -> None:
    tree.replace("./FwUpdate/x/Update/PkgData", b"\x00\xff", None, None, "srv1")
    listing = tree.get("FwUpdate/x?list=StructData", "srv1")
    assert listing == [
        NodeData("./FwUpdate/x", "node", None, None),
        NodeData("./FwUpdate/x/PkgName", "chr", "text/plain", ""),
        NodeData("./FwUpdate/x/Update", "node", None, None),
        NodeData("./FwUpdate/x/Update/PkgData", "bin", "application/octet-stream", b"\x00\xff"),
        NodeData("./FwUpdate/x/State", "int", "text/plain", "10"),
    ]


def test_list_of_root_and_of_leaf(tree: DmTree) -> None:
    root = tree.get(".?list=Struct", "s")
    assert root[0].uri == "." and len(root) == 1 + 4 + 6 + 1
    assert tree.get("./DevInfo/Mod?list=StructData", "s") == [NodeData("./DevInfo/Mod", "chr", "text/plain", "X1")]


def test_list_leaves_out_unreadable_nodes(tree: DmTree) -> None:
    tree.put("./Open/pub", "1")
    tree.put("./Open/priv", interior=True, acl="Get=srv1")
    tree.put("./Open/priv/key", "k")
    tree.put("./Open/priv/shared", "s", acl="Get=*")
    uris = [n.uri for n in tree.get("./Open?list=StructData", "srv2")]
    assert uris == ["./Open", "./Open/pub", "./Open/priv/shared"]
    assert len(tree.get("./Open?list=StructData", "srv1")) == 5
    assert code_of(tree.get, "./Open/priv?list=Struct", "srv2") == 425


# ---- ACLs ----------------------------------------------------------------------------------


def test_acl_inheritance_reaches_root_default() -> None:
    t = DmTree()
    t.put("./A/B/C", "v")
    assert t.get("./A/B/C", "anyone")[0].data == "v"  # Get=* from the root
    t.replace("./A/B/C", "w", None, None, "anyone")  # Replace=* from the root
    assert code_of(t.exec, "./A/B/C", None, None, "anyone") == 425  # the root grants no Exec
    assert code_of(t.delete, "./A/B/C", "anyone") == 425  # nor Delete


def test_acl_is_inherited_whole_not_per_command(tree: DmTree) -> None:
    # DevInfo has Get=* only: the root's Replace=* does not leak through.
    assert code_of(tree.replace, "./DevInfo/Mod", "X9", None, None, "srv1") == 425
    assert code_of(tree.add, "./DevInfo/Ext", None, "node", None, "srv1") == 425


def test_acl_nearest_non_empty_wins(tree: DmTree) -> None:
    tree.put("./FwUpdate/x/State", "10", format="int", acl="Get=srv3")
    assert code_of(tree.get, "./FwUpdate/x/State", "srv1") == 425
    assert tree.get("./FwUpdate/x/State", "srv3")[0].data == "10"
    assert tree.get("./FwUpdate/x/PkgName", "srv2")[0].data == ""  # from ./FwUpdate


def test_acl_per_server_lists(tree: DmTree) -> None:
    tree.replace("./FwUpdate/x/PkgName", "a", None, None, "srv1")
    tree.replace("./FwUpdate/x/PkgName", "b", None, None, "srv2")
    assert code_of(tree.replace, "./FwUpdate/x/PkgName", "c", None, None, "srv3") == 425
    assert code_of(tree.replace, "./FwUpdate/x/PkgName", "c", None, None, "srv") == 425  # no prefix match
    assert tree.value("./FwUpdate/x/PkgName") == "b"


def test_acl_wildcard_with_ids_grants_all() -> None:
    t = DmTree()
    t.put("./N", "v", acl="Get=srv1+*&Get=srv2")  # repeated commands add up
    assert t.get("./N", "anyone")[0].data == "v"


@pytest.mark.parametrize("acl", ["Get", "Get=", "=*", "Copy=*", "get=*", "Get=a b", "Get=a*", "Get=*&",
                                 "Get=a++b", "Get=a=b", "Get=a\tb", "Get=*&&Add=*", "Get=a\x00"])
def test_malformed_acl_is_400(tree: DmTree, acl: str) -> None:
    assert code_of(tree.put, "./Open/n", "v", acl=acl) == 400
    tree.put("./Open/n", "v")
    assert code_of(tree.replace, "./Open/n?prop=ACL", acl, None, None, "s") == 400
    assert tree.get("./Open/n?prop=ACL", "s")[0].data == ""


def test_replace_acl_of_leaf_needs_replace_on_parent(tree: DmTree) -> None:
    tree.put("./Open/dir", interior=True, acl="Get=*&Replace=owner")
    tree.put("./Open/dir/leaf", "v", acl="Get=*&Replace=*")
    # Replace on the leaf itself is not enough to change its ACL (TND 7.7.1.3) ...
    assert code_of(tree.replace, "./Open/dir/leaf?prop=ACL", "Get=x", None, None, "other") == 425
    # ... Replace on the parent is.
    tree.replace("./Open/dir/leaf?prop=ACL", "Get=owner&Replace=owner", None, None, "owner")
    assert tree.get("./Open/dir/leaf?prop=ACL", "owner")[0].data == "Get=owner&Replace=owner"
    assert code_of(tree.get, "./Open/dir/leaf", "other") == 425


def test_replace_acl_of_interior_node_by_itself_or_parent(tree: DmTree) -> None:
    tree.put("./Open/dir", interior=True, acl="Get=*&Replace=srv5")
    tree.put("./Lock", interior=True, acl="Get=*")
    tree.put("./Lock/dir", interior=True, acl="Replace=srv5")
    tree.replace("./Lock/dir?prop=ACL", "Replace=srv5&Get=srv5", None, None, "srv5")  # own right
    assert code_of(tree.replace, "./Lock/dir?prop=ACL", "Get=*", None, None, "srv6") == 425
    tree.replace("./Open/dir?prop=ACL", b"Get=srv6", None, None, "srv6")  # the parent's Replace=*
    assert tree.get("./Open/dir?prop=ACL", "srv6")[0].data == "Get=srv6"
    tree.replace("./Open/dir?prop=ACL", None, None, None, "srv6")  # no data: inherit again
    assert tree.get("./Open/dir?prop=ACL", "x")[0].data == ""


def test_replace_root_acl_must_keep_add_for_all() -> None:
    t = DmTree()
    t.replace(".?prop=ACL", "Add=*&Get=*&Replace=srv1", None, None, "srv1")
    assert code_of(t.replace, ".?prop=ACL", "Add=*&Get=*", None, None, "srv2") == 425
    assert code_of(t.replace, ".?prop=ACL", "Add=srv1&Get=*&Replace=srv1", None, None, "srv1") == 405
    assert code_of(t.replace, ".?prop=ACL", "", None, None, "srv1") == 405
    assert t.get(".?prop=ACL", "x")[0].data == "Add=*&Get=*&Replace=srv1"


def test_replace_acl_errors(tree: DmTree) -> None:
    assert code_of(tree.replace, "./Nope?prop=ACL", "Get=*", None, None, "s") == 404
    assert code_of(tree.replace, "./Open?prop=ACL", b"\xff", None, None, "s") == 415
    assert tree.get("./Open?prop=ACL", "s")[0].data == "Add=*&Get=*&Replace=*&Delete=*&Exec=*"


@pytest.mark.parametrize(("query", "code"), [("prop=Format", 405), ("prop=Type", 405), ("prop=Size", 405),
                                             ("prop=TStamp", 405), ("prop=VerNo", 405), ("prop=Name", 405),
                                             ("prop=Title", 406), ("prop=Foo", 406), ("list=Struct", 406),
                                             ("x", 406)])
def test_replace_other_properties(tree: DmTree, query: str, code: int) -> None:
    assert code_of(tree.replace, f"./DevInfo/Mod?{query}", "v", None, None, "s") == code


def test_replace_name_of_dynamic_node_is_unsupported(tree: DmTree) -> None:
    tree.add("./Open/d", "v", "chr", None, "s")
    assert code_of(tree.replace, "./Open/d?prop=Name", "e", None, None, "s") == 406


# ---- Add -----------------------------------------------------------------------------------


def test_add_leaf(tree: DmTree) -> None:
    tree.add("./Open/n", "hello", "chr", None, "s")
    assert tree.get("./Open/n", "s") == [NodeData("./Open/n", "chr", "text/plain", "hello")]
    assert tree.get("./Open/n?prop=ACL", "s")[0].data == ""
    tree.add("./Open/b", b"\x01\x02", "bin", "application/octet-stream", "s")
    assert tree.value("./Open/b") == b"\x01\x02"
    tree.delete("./Open/n", "s")  # server-made nodes are dynamic


def test_add_interior_and_missing_parents(tree: DmTree) -> None:
    tree.add("./FwUpdate/y", None, "node", "urn:oma:mo:oma-fumo:1.0", "srv1")
    assert tree.get("./FwUpdate/y", "srv1")[0] == NodeData("./FwUpdate/y", "node", "urn:oma:mo:oma-fumo:1.0", "")
    tree.add("./FwUpdate/z/Download/PkgURL", "http://h/p", "chr", None, "srv1")
    assert tree.get("./FwUpdate/z?list=Struct", "srv1") == [
        NodeData("./FwUpdate/z", "node", None, None),
        NodeData("./FwUpdate/z/Download", "node", None, None),
        NodeData("./FwUpdate/z/Download/PkgURL", "chr", "text/plain", None)]
    tree.delete("./FwUpdate/z", "srv1")  # the implied parents are dynamic too
    assert not tree.exists("./FwUpdate/z")


def test_add_existing_is_418(tree: DmTree) -> None:
    assert code_of(tree.add, "./DevInfo/Mod", "v", "chr", None, "srv1") == 418
    assert code_of(tree.add, ".", None, "node", None, "srv1") == 418
    assert code_of(tree.add, "./Open", None, "node", None, "srv1") == 418


def test_add_needs_add_on_nearest_existing_ancestor(tree: DmTree) -> None:
    assert code_of(tree.add, "./FwUpdate/y", None, "node", None, "srv2") == 425
    assert code_of(tree.add, "./FwUpdate/y/deep/er", "v", "chr", None, "srv2") == 425
    tree.add("./FwUpdate/y/deep/er", "v", "chr", None, "srv1")
    assert not tree.exists("./X")
    tree.add("./X/Y", "v", "chr", None, "anyone")  # the root's Add=*


def test_add_under_leaf_is_405(tree: DmTree) -> None:
    assert code_of(tree.add, "./DevInfo/Mod/Sub", "v", "chr", None, "srv1") == 405
    assert code_of(tree.add, "./Open", None, "node", None, "srv1") == 418


def test_add_with_query_is_405(tree: DmTree) -> None:
    assert code_of(tree.add, "./Open/n?prop=ACL", "Get=*", "chr", None, "s") == 405


@pytest.mark.parametrize(("fmt", "data"), [
    ("int", "0"), ("int", "-2147483648"), ("int", "2147483647"), ("int", "+7"), ("int", b"42"),
    ("bool", "true"), ("bool", "false"), ("float", "1.5"), ("float", "-.5e-3"), ("float", "3"),
    ("date", "2024-02-29"), ("time", "13:45:00"), ("time", "13:45:00Z"), ("null", None), ("null", ""),
    ("node", None), ("chr", "ü"), ("chr", "ü".encode()), ("b64", "AAE="), ("xml", "<a/>"),
    ("bin", b"\xff"), ("int", None), ("int", ""), ("bool", b""),
])
def test_add_accepts_valid_values(tree: DmTree, fmt: str, data: Value) -> None:
    tree.add("./Open/n", data, fmt, None, "s")
    stored = tree.value("./Open/n")
    if fmt in ("node", "null"):
        assert stored is None
    elif fmt in ("chr", "int", "bool") and isinstance(data, bytes) and data:
        assert stored == data.decode()  # text formats are stored as str
    else:
        assert stored == data


@pytest.mark.parametrize(("fmt", "data"), [
    ("int", "2147483648"), ("int", "-2147483649"), ("int", "1.5"), ("int", "abc"), ("int", " 1"),
    ("int", "1_000"), ("int", "٣"), ("bool", "True"), ("bool", "1"), ("bool", "yes"), ("float", "nan"),
    ("float", "inf"), ("float", "1_0"), ("float", "1e"), ("date", "2024-02-30"), ("date", "yesterday"),
    ("time", "25:00"), ("null", "x"), ("node", "child"), ("chr", b"\xff\xfe"), ("string", "v"),
    ("Chr", "v"), ("", "v"),
])
def test_add_refuses_bad_format_or_value_with_415(tree: DmTree, fmt: str, data: Value) -> None:
    assert code_of(tree.add, "./Open/n", data, fmt, None, "s") == 415
    assert not tree.exists("./Open/n")


@given(st.integers())
def test_int_format_is_signed_32_bit(n: int) -> None:
    t = DmTree()
    t.put("./N", "0", format="int")
    if -(2**31) <= n < 2**31:
        t.replace("./N", str(n), None, None, "s")
        assert t.value("./N") == str(n)
    else:
        assert code_of(t.replace, "./N", str(n), None, None, "s") == 415
        assert t.value("./N") == "0"


# ---- Replace -------------------------------------------------------------------------------


def test_replace_keeps_format_and_type_unless_given(tree: DmTree) -> None:
    tree.replace("./FwUpdate/x/State", "50", None, None, "srv1")
    assert tree.get("./FwUpdate/x/State", "s")[0] == NodeData("./FwUpdate/x/State", "int", "text/plain", "50")
    tree.replace("./FwUpdate/x/State", "hi", "chr", "text/x-note", "srv1")
    assert tree.get("./FwUpdate/x/State", "s")[0] == NodeData("./FwUpdate/x/State", "chr", "text/x-note", "hi")
    tree.replace("./FwUpdate/x/State", None, None, None, "srv1")
    assert tree.value("./FwUpdate/x/State") is None


def test_replace_validates_against_the_node_format(tree: DmTree) -> None:
    assert code_of(tree.replace, "./FwUpdate/x/State", "ten", None, None, "srv1") == 415
    assert code_of(tree.replace, "./FwUpdate/x/State", "1", "bogus", None, "srv1") == 415
    assert tree.get("./FwUpdate/x/State", "s")[0].format == "int"
    assert tree.value("./FwUpdate/x/State") == "10"


def test_replace_errors(tree: DmTree) -> None:
    assert code_of(tree.replace, "./FwUpdate/x/Nope", "v", None, None, "srv1") == 404
    assert code_of(tree.replace, "./FwUpdate/x", "v", None, None, "srv1") == 405  # interior
    assert code_of(tree.replace, ".", "v", None, None, "srv1") == 405
    assert code_of(tree.replace, "./FwUpdate/x/State", None, "node", None, "srv1") == 405
    assert code_of(tree.replace, "./FwUpdate/x/State", "1", None, None, "srv3") == 425
    assert code_of(tree.replace, "./FwUpdate/x", "v", None, None, "srv3") == 425  # 425 before 405


def test_on_replace_sees_new_value(tree: DmTree) -> None:
    seen: list[tuple[str, Value, Value]] = []
    tree.on_replace("FwUpdate/x/Update/PkgData",
                    lambda uri, data: seen.append((uri, data, tree.value(uri))))
    tree.replace("./FwUpdate/x/Update/PkgData", b"pkg", None, None, "srv1")
    assert seen == [("./FwUpdate/x/Update/PkgData", b"pkg", b"pkg")]
    tree.replace("./FwUpdate/x/State", "20", None, None, "srv1")  # other nodes: no call
    assert len(seen) == 1


def test_on_replace_refusal_keeps_old_value(tree: DmTree) -> None:
    def refuse(uri: str, data: Value) -> None:
        raise TreeError(413, "package too large")

    tree.replace("./FwUpdate/x/Update/PkgData", b"old", None, None, "srv1")
    tree.on_replace("./FwUpdate/x/Update/PkgData", refuse)
    assert code_of(tree.replace, "./FwUpdate/x/Update/PkgData", "new", "chr", "text/plain", "srv1") == 413
    assert tree.get("./FwUpdate/x/Update/PkgData", "s")[0] == NodeData(
        "./FwUpdate/x/Update/PkgData", "bin", "application/octet-stream", b"old")


def test_on_replace_unexpected_error_also_rolls_back(tree: DmTree) -> None:
    def crash(uri: str, data: Value) -> None:
        raise RuntimeError("bug")

    tree.on_replace("./FwUpdate/x/State", crash)
    with pytest.raises(RuntimeError):
        tree.replace("./FwUpdate/x/State", "40", None, None, "srv1")
    assert tree.value("./FwUpdate/x/State") == "10"


def test_handler_registration_refuses_queries(tree: DmTree) -> None:
    assert code_of(tree.on_replace, "./A?prop=ACL", lambda u, d: None) == 400
    assert code_of(tree.on_exec, "./A?prop=ACL", lambda u, d, c: 200) == 400


# ---- Delete --------------------------------------------------------------------------------


def test_delete_removes_subtree(tree: DmTree) -> None:
    tree.add("./FwUpdate/y/Download/PkgURL", "u", "chr", None, "srv1")
    tree.add("./FwUpdate/w", None, "node", None, "srv1")
    tree.delete("./FwUpdate/y", "srv1")
    assert not tree.exists("./FwUpdate/y") and not tree.exists("./FwUpdate/y/Download/PkgURL")
    assert tree.children("./FwUpdate") == ["x", "w"]
    assert tree.get("./FwUpdate", "s")[0].data == "x/w"
    tree.add("./FwUpdate/y", "back", "chr", None, "srv1")  # the name is free again
    assert tree.children("./FwUpdate") == ["x", "w", "y"]


def test_delete_errors(tree: DmTree) -> None:
    assert code_of(tree.delete, "./Open/Nope", "s") == 404
    assert code_of(tree.delete, "./FwUpdate/x/State", "srv1") == 405  # permanent
    assert code_of(tree.delete, "./FwUpdate/x/State", "srv2") == 425
    assert code_of(tree.delete, ".", "s") == 425  # the root ACL grants no Delete...
    t = DmTree(root_acl="Add=*&Delete=*")
    assert code_of(t.delete, ".", "s") == 405  # ...and the root is permanent anyway
    assert code_of(tree.delete, "./Open?prop=ACL", "s") == 405


def test_delete_of_subtree_with_permanent_node_deletes_nothing(tree: DmTree) -> None:
    tree.add("./FwUpdate/y/a", "1", "chr", None, "srv1")
    tree.put("./FwUpdate/y/fixed", "2")  # device-made: permanent
    assert code_of(tree.delete, "./FwUpdate/y", "srv1") == 405
    assert tree.children("./FwUpdate/y") == ["a", "fixed"]
    tree.delete("./FwUpdate/y/a", "srv1")


def test_delete_needs_right_on_node_only(tree: DmTree) -> None:
    tree.add("./Open/d/locked", "v", "chr", None, "s")
    tree.put("./Open/d/locked", "v", permanent=False, acl="Get=*")
    tree.delete("./Open/d", "s")  # TND: a dynamic subtree goes as a whole
    assert not tree.exists("./Open/d")


# ---- Copy ----------------------------------------------------------------------------------


def test_copy_leaf_to_new_node(tree: DmTree) -> None:
    tree.put("./Open/src", "42", format="int", type="text/x-num", acl="Get=*&Replace=nobody")
    tree.copy("./Open/a/dst", "./Open/src", "s")
    assert tree.get("./Open/a/dst", "s")[0] == NodeData("./Open/a/dst", "int", "text/x-num", "42")
    assert tree.get("./Open/a/dst?prop=ACL", "s")[0].data == ""  # ACL not copied: inherited
    tree.delete("./Open/a", "s")  # dynamic
    assert tree.value("./Open/src") == "42"


def test_copy_leaf_onto_leaf_replaces(tree: DmTree) -> None:
    tree.put("./Open/pkg", b"image", format="bin", type="application/octet-stream")
    calls: list[Value] = []
    tree.on_replace("./FwUpdate/x/Update/PkgData", lambda u, d: calls.append(d))
    tree.copy("./FwUpdate/x/Update/PkgData", "./Open/pkg", "srv1")
    assert tree.value("./FwUpdate/x/Update/PkgData") == b"image"
    assert calls == [b"image"]
    assert code_of(tree.delete, "./FwUpdate/x/Update/PkgData", "srv1") == 405  # still permanent


def test_copy_onto_leaf_refused_by_handler(tree: DmTree) -> None:
    def refuse(uri: str, data: Value) -> None:
        raise TreeError(415, "not a package")

    tree.put("./Open/pkg", "text")
    tree.on_replace("./FwUpdate/x/Update/PkgData", refuse)
    assert code_of(tree.copy, "./FwUpdate/x/Update/PkgData", "./Open/pkg", "srv1") == 415
    assert tree.value("./FwUpdate/x/Update/PkgData") is None


def test_copy_subtree(tree: DmTree) -> None:
    tree.copy("./Open/fw", "./FwUpdate/x", "s")
    assert [(n.uri, n.format, n.data) for n in tree.get("./Open/fw?list=StructData", "s")] == [
        ("./Open/fw", "node", None), ("./Open/fw/PkgName", "chr", ""), ("./Open/fw/Update", "node", None),
        ("./Open/fw/Update/PkgData", "bin", None), ("./Open/fw/State", "int", "10")]
    tree.delete("./Open/fw", "s")
    assert tree.exists("./FwUpdate/x/State")


def test_copy_into_own_subtree(tree: DmTree) -> None:
    tree.add("./Open/a/b", "v", "chr", None, "s")
    tree.copy("./Open/a/c", "./Open/a", "s")
    assert [n.uri for n in tree.get("./Open/a?list=Struct", "s")] == [
        "./Open/a", "./Open/a/b", "./Open/a/c", "./Open/a/c/b"]


def test_copy_errors(tree: DmTree) -> None:
    assert code_of(tree.copy, "./Open/t", "./Open/Nope", "s") == 404
    tree.put("./Open/leaf", "v")
    assert code_of(tree.copy, "./Open", "./Open/leaf", "s") == 405  # existing interior target
    assert code_of(tree.copy, "./Open/leaf", "./DevInfo", "s") == 405  # interior source onto a leaf
    assert code_of(tree.copy, "./DevInfo/Mod/t", "./Open/leaf", "s") == 405  # under a leaf
    assert code_of(tree.copy, "./Open/t?prop=ACL", "./Open/leaf", "s") == 405
    assert code_of(tree.copy, "./Open/t", "./Open/leaf?prop=ACL", "s") == 405


def test_copy_permissions(tree: DmTree) -> None:
    tree.put("./Open/secret", interior=True)
    tree.put("./Open/secret/pin", "1234", acl="Get=srv1")
    assert code_of(tree.copy, "./Open/leak", "./Open/secret/pin", "srv2") == 425
    assert code_of(tree.copy, "./Open/leak", "./Open/secret", "srv2") == 425  # a hidden child blocks it
    assert not tree.exists("./Open/leak")
    assert code_of(tree.copy, "./DevInfo/Copy", "./Open/secret/pin", "srv1") == 425  # no Add on DevInfo
    assert code_of(tree.copy, "./DevInfo/Mod", "./Open/secret/pin", "srv1") == 425  # no Replace on Mod
    tree.copy("./Open/mine", "./Open/secret/pin", "srv1")
    assert tree.value("./Open/mine") == "1234"


# ---- Exec ----------------------------------------------------------------------------------


def test_exec_calls_handler_and_returns_its_code(tree: DmTree) -> None:
    calls: list[tuple[str, Value, str | None]] = []

    def download(uri: str, data: Value, correlator: str | None) -> int:
        calls.append((uri, data, correlator))
        return 202

    tree.put("./FwUpdate/x/Download", interior=True)
    tree.on_exec("FwUpdate/x/Download", download)
    assert tree.exec("./FwUpdate/x/Download", "go", "corr-1", "srv1") == 202
    assert tree.exec("FwUpdate/x/Download", None, None, "srv1") == 202
    assert calls == [("./FwUpdate/x/Download", "go", "corr-1"), ("./FwUpdate/x/Download", None, None)]
    tree.on_exec("./FwUpdate/x/Download", lambda u, d, c: 200)  # re-registering replaces
    assert tree.exec("./FwUpdate/x/Download", None, None, "srv1") == 200


def test_exec_errors(tree: DmTree) -> None:
    tree.on_exec("./FwUpdate/x/Update", lambda u, d, c: 202)
    tree.on_exec("./FwUpdate/x/Gone", lambda u, d, c: 202)
    assert code_of(tree.exec, "./FwUpdate/x/Gone", None, None, "srv1") == 404  # a handler is not a node
    assert code_of(tree.exec, "./FwUpdate/x/State", None, None, "srv1") == 405  # no handler
    assert code_of(tree.exec, "./FwUpdate/x/Update", None, None, "srv2") == 425
    assert code_of(tree.exec, "./FwUpdate/x/Update?prop=ACL", None, None, "srv1") == 405


def test_exec_handler_error_propagates(tree: DmTree) -> None:
    def busy(uri: str, data: Value, correlator: str | None) -> int:
        raise TreeError(500, "update already running")

    tree.on_exec("./FwUpdate/x/Update", busy)
    assert code_of(tree.exec, "./FwUpdate/x/Update", None, None, "srv1") == 500


# ---- Atomic --------------------------------------------------------------------------------


def test_snapshot_restore_undoes_everything(tree: DmTree) -> None:
    before = tree.get(".?list=StructData", "s")
    acls = [tree.get(f"{n.uri}?prop=ACL", "s")[0].data for n in before]
    snap = tree.snapshot()
    tree.replace("./FwUpdate/x/State", "50", None, None, "srv1")
    tree.add("./Open/new/deep", "v", "chr", None, "s")
    tree.add("./FwUpdate/y", None, "node", None, "srv1")
    tree.delete("./FwUpdate/y", "srv1")
    tree.add("./Open/gone", "v", "chr", None, "s")
    tree.replace("./Open?prop=ACL", "Get=*", None, None, "s")
    tree.put("./DevInfo/Mod", "changed")
    tree.restore(snap)
    assert tree.get(".?list=StructData", "s") == before
    assert [tree.get(f"{n.uri}?prop=ACL", "s")[0].data for n in before] == acls
    assert tree.children("./Open") == []
    # the snapshot is not consumed or changed by later edits
    tree.add("./Open/again", "v", "chr", None, "s")
    tree.restore(snap)
    assert tree.get(".?list=StructData", "s") == before


def test_restore_brings_back_deleted_nodes(tree: DmTree) -> None:
    tree.add("./Open/d/e", "v", "chr", None, "s")
    snap = tree.snapshot()
    tree.delete("./Open/d", "s")
    tree.restore(snap)
    assert tree.value("./Open/d/e") == "v"
    tree.delete("./Open/d", "s")  # still dynamic


def test_handlers_survive_restore(tree: DmTree) -> None:
    snap = tree.snapshot()
    tree.on_exec("./FwUpdate/x/Update", lambda u, d, c: 202)
    tree.restore(snap)
    assert tree.exec("./FwUpdate/x/Update", None, None, "srv1") == 202


def test_restore_refuses_foreign_objects(tree: DmTree) -> None:
    with pytest.raises(TypeError):
        tree.restore({"./A": 1})


_names = st.sampled_from(["a", "b", "c"])
_paths = st.lists(_names, min_size=1, max_size=3).map(lambda s: "./Open/" + "/".join(s))
_ops = st.lists(st.tuples(st.sampled_from(["add", "addnode", "delete", "replace", "copy"]), _paths, _paths),
                max_size=12)


@given(_ops, _ops)
def test_restore_after_any_edits(setup: list[tuple[str, str, str]], edits: list[tuple[str, str, str]]) -> None:
    t = DmTree()
    t.put("./Open", interior=True, acl="Add=*&Get=*&Replace=*&Delete=*")

    def apply(ops: list[tuple[str, str, str]]) -> None:
        for op, p, q in ops:
            try:
                if op == "add":
                    t.add(p, p, "chr", None, "s")
                elif op == "addnode":
                    t.add(p, None, "node", None, "s")
                elif op == "delete":
                    t.delete(p, "s")
                elif op == "replace":
                    t.replace(p, q, None, None, "s")
                else:
                    t.copy(p, q, "s")
            except TreeError:
                pass

    apply(setup)
    before = t.get(".?list=StructData", "s")
    snap = t.snapshot()
    apply(edits)
    t.restore(snap)
    assert t.get(".?list=StructData", "s") == before
    # the listing is a pre-order walk: every node follows its parent
    uris = [n.uri for n in before]
    for i, uri in enumerate(uris[1:], 1):
        assert uri.rsplit("/", 1)[0] in uris[:i]


def test_snapshot_of_a_few_hundred_nodes_is_independent() -> None:
    t = DmTree()
    for i in range(300):
        t.put(f"./N{i % 10}/leaf{i}", str(i), format="int")
    snap = t.snapshot()
    for i in range(300):
        t.replace(f"./N{i % 10}/leaf{i}", "0", None, None, "s")
    t.restore(snap)
    assert all(t.value(f"./N{i % 10}/leaf{i}") == str(i) for i in range(300))
