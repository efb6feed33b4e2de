"""Load and fault tests of a DM server: `fotadelta loadtest` (light asyncio devices in `devices`, the
operator's fleet API calls in `operator`, the server's process and its workers in `server`, the
run and its verdict in `run`)."""
