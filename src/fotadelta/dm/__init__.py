"""OMA DM 1.2 (SyncML DM): messages and their encodings, authentication, notifications, the
device's management tree, and the client and server session engines."""
