"""OMA Download Descriptor 1.0 (`application/vnd.oma.dd+xml`) for a package, with prompt texts.

The standard elements describe the download (type, size, objectURI, name, vendor, DDVersion...).
The four prompts a device shows around an update (before and after the download, before and
after the update) travel in an extension element of fotadelta's own namespace, in English,
German, French and Spanish; the device picks the language from its MSISDN's country calling code,
else from ./DevInfo/Lang, else English."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from fotadelta.errors import PackageError
from fotadelta.package import Manifest

MIME_TYPE = "application/vnd.oma.dd+xml"
PACKAGE_MIME_TYPE = "application/vnd.fotadelta.package"
DD_NS = "http://www.openmobilealliance.org/xmlns/dd"
PROMPT_NS = "urn:fotadelta:dd-prompts:1"
MAX_DESCRIPTOR = 64 * 1024
PHASES = ("pre-download", "post-download", "pre-update", "post-update")
LANGUAGES = ("en", "de", "fr", "es")
DEFAULT_LANGUAGE = "en"

_PROMPTS: dict[str, dict[str, str]] = {
    "pre-download": {
        "en": "A software update for your {device} ({size}) is ready. Download it now?",
        "de": "Ein Software-Update für Ihr {device} ({size}) ist verfügbar. Jetzt herunterladen?",
        "fr": "Une mise à jour logicielle pour votre {device} ({size}) est disponible. La télécharger maintenant ?",
        "es": "Hay una actualización de software para su {device} ({size}). ¿Descargarla ahora?",
    },
    "post-download": {
        "en": "The update to version {version} has been downloaded.",
        "de": "Das Update auf Version {version} wurde heruntergeladen.",
        "fr": "La mise à jour vers la version {version} a été téléchargée.",
        "es": "La actualización a la versión {version} se ha descargado.",
    },
    "pre-update": {
        "en": "Install version {version} now? The device restarts and cannot be used for a few minutes.",
        "de": "Version {version} jetzt installieren? Das Gerät startet neu und ist einige Minuten nicht nutzbar.",
        "fr": "Installer la version {version} maintenant ? L'appareil redémarre et sera indisponible quelques minutes.",
        "es": "¿Instalar la versión {version} ahora? El dispositivo se reiniciará y no podrá usarse unos minutos.",
    },
    "post-update": {
        "en": "Your {device} now runs version {version}.",
        "de": "Ihr {device} läuft jetzt mit Version {version}.",
        "fr": "Votre {device} fonctionne maintenant avec la version {version}.",
        "es": "Su {device} ya funciona con la versión {version}.",
    },
}

# Country calling codes (ITU-T E.164) of countries whose main language is one we carry.
_CALLING_CODES: dict[str, str] = {
    "1": "en", "44": "en", "353": "en", "61": "en", "64": "en", "27": "en",
    "49": "de", "43": "de", "41": "de", "423": "de",
    "33": "fr", "32": "fr", "352": "fr", "377": "fr", "221": "fr", "225": "fr",
    "34": "es", "52": "es", "54": "es", "56": "es", "57": "es", "51": "es", "58": "es", "593": "es",
    "591": "es", "595": "es", "598": "es", "502": "es", "503": "es", "504": "es", "505": "es", "506": "es",
    "507": "es",
}


@dataclass(frozen=True)
class Descriptor:
    """A parsed download descriptor."""

    object_uri: str
    size: int
    mime_type: str
    name: str = ""
    vendor: str = ""
    install_notify_uri: str = ""
    prompts: dict[str, dict[str, str]] = field(default_factory=dict)

    def prompt(self, phase: str, *, msisdn: str | None = None, devinfo_lang: str | None = None) -> str:
        """The prompt for phase in the device's language."""
        texts = self.prompts.get(phase, {})
        if not texts:
            raise PackageError(f"the descriptor has no {phase} prompt")
        lang = choose_language(msisdn, devinfo_lang, tuple(texts))
        return texts.get(lang) or texts.get(DEFAULT_LANGUAGE) or next(iter(texts.values()))


def choose_language(msisdn: str | None, devinfo_lang: str | None, available: tuple[str, ...] = LANGUAGES) -> str:
    """From the MSISDN's country calling code, else ./DevInfo/Lang (e.g. "de-DE"), else English."""
    if msisdn:
        digits = msisdn.strip().removeprefix("+").removeprefix("00")
        for n in (3, 2, 1):  # calling codes are prefix-free, 1 to 3 digits
            lang = _CALLING_CODES.get(digits[:n])
            if lang in available:
                return lang
    if devinfo_lang:
        lang = devinfo_lang.strip().lower().replace("_", "-").split("-")[0]
        if lang in available:
            return lang
    return DEFAULT_LANGUAGE


def make(manifest: Manifest, size: int, object_uri: str, *, install_notify_uri: str | None = None) -> bytes:
    """The descriptor of a package of size bytes served at object_uri."""
    ET.register_namespace("", DD_NS)
    ET.register_namespace("p", PROMPT_NS)
    media = ET.Element(f"{{{DD_NS}}}media")
    device = f"{manifest.make} {manifest.model}"
    for tag, text in (("type", PACKAGE_MIME_TYPE), ("size", str(size)), ("objectURI", object_uri),
                      ("name", f"{device} {manifest.from_version} to {manifest.to_version}"),
                      ("vendor", manifest.make), ("DDVersion", "1.0"),
                      ("description", f"Firmware update for {device} to version {manifest.to_version}")):
        ET.SubElement(media, f"{{{DD_NS}}}{tag}").text = text
    if install_notify_uri:
        ET.SubElement(media, f"{{{DD_NS}}}installNotifyURI").text = install_notify_uri
    prompts = ET.SubElement(media, f"{{{PROMPT_NS}}}prompts")
    human_size = f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} B"
    for phase in PHASES:
        for lang in LANGUAGES:
            p = ET.SubElement(prompts, f"{{{PROMPT_NS}}}prompt", phase=phase, lang=lang)
            p.text = _PROMPTS[phase][lang].format(device=device, version=manifest.to_version, size=human_size)
    return bytes(ET.tostring(media, encoding="utf-8", xml_declaration=True))


def parse(xml: bytes) -> Descriptor:
    """Parse a descriptor safely (no entity expansion, bounded size); PackageError if malformed."""
    if len(xml) > MAX_DESCRIPTOR:
        raise PackageError("download descriptor is too large")
    try:
        root = SafeET.fromstring(xml)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise PackageError(f"download descriptor is not acceptable XML: {exc}") from None
    if root.tag != f"{{{DD_NS}}}media":
        raise PackageError("not an OMA download descriptor (root is not dd:media)")

    def text(tag: str) -> str:
        el = root.find(f"{{{DD_NS}}}{tag}")
        return (el.text or "").strip() if el is not None else ""

    uri, size, version = text("objectURI"), text("size"), text("DDVersion")
    if not uri:
        raise PackageError("download descriptor has no objectURI")
    if not size.isdigit():
        raise PackageError("download descriptor has no valid size")
    if version and version != "1.0":
        raise PackageError(f"unsupported DDVersion {version}")
    prompts: dict[str, dict[str, str]] = {}
    for p in root.iter(f"{{{PROMPT_NS}}}prompt"):
        phase, lang = p.get("phase", ""), p.get("lang", "")
        if phase in PHASES and lang:
            prompts.setdefault(phase, {})[lang] = (p.text or "").strip()
    return Descriptor(uri, int(size), text("type"), text("name"), text("vendor"), text("installNotifyURI"), prompts)
