"""Sandbox case systems for casebridge: Liquidlogic LCS and EHM stand-ins.

Real HTTP services (FastAPI on uvicorn) with their own sqlite storage and a
bearer token, reached by base URL exactly as a connector reaches the real
systems. All data in them is synthetic.

    from sandboxes import create_lcs_app, serve
    handle = serve(create_lcs_app(tmp / "lcs.sqlite3", "token"), "127.0.0.1", 0)
    ...  # talk to handle.url
    handle.stop()
"""

from sandboxes import ehm, lcs
from sandboxes._common import (
    FAULTS_PATH,
    Database,
    FaultRegistry,
    FaultSpec,
    SandboxError,
    ServerHandle,
    bearer_auth,
    run_forever,
    serve,
)
from sandboxes.ehm import create_app as create_ehm_app
from sandboxes.lcs import create_app as create_lcs_app

__all__ = [
    "FAULTS_PATH",
    "Database",
    "FaultRegistry",
    "FaultSpec",
    "SandboxError",
    "ServerHandle",
    "bearer_auth",
    "create_ehm_app",
    "create_lcs_app",
    "ehm",
    "lcs",
    "run_forever",
    "serve",
]
