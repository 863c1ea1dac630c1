"""Sandbox case systems for casebridge: Liquidlogic LCS and EHM, Care Director, TED, and an SMTP relay.

Real HTTP services (FastAPI on uvicorn) with their own sqlite storage and a
bearer token, reached by base URL exactly as a connector reaches the real
systems. All data in them is synthetic.

    from sandboxes import create_lcs_app, serve
    handle = serve(create_lcs_app(tmp / "lcs.sqlite3", "token"), "127.0.0.1", 0)
    ...  # talk to handle.url
    handle.stop()
"""

from sandboxes import care_director, ehm, lcs, ted
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
from sandboxes.care_director import create_app as create_care_director_app
from sandboxes.ehm import create_app as create_ehm_app
from sandboxes.lcs import create_app as create_lcs_app
from sandboxes.smtp import SmtpSandbox
from sandboxes.ted import create_app as create_ted_app

__all__ = [
    "FAULTS_PATH",
    "Database",
    "FaultRegistry",
    "FaultSpec",
    "SandboxError",
    "ServerHandle",
    "SmtpSandbox",
    "bearer_auth",
    "care_director",
    "create_care_director_app",
    "create_ehm_app",
    "create_lcs_app",
    "create_ted_app",
    "ehm",
    "lcs",
    "run_forever",
    "serve",
    "ted",
]
