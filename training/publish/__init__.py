"""Publishing: pushing run folders to the Hub (`hub`), the push ledger (`hub_ledger`), keeping the token out
of every message (`redaction`), and a Hub-compatible server on 127.0.0.1 (`hub_server`)."""
