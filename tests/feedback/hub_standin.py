"""A local stand-in for the four Hugging Face Hub endpoints that ``huggingface_hub``'s
``create_repo`` + ``upload_folder`` call (create a repo, check the README card's YAML, ask how to
upload each file, commit the files inline), served by uvicorn; committed files land in
``root/<repo id>/``. Files the real Hub would take through LFS / Xet are not supported: every
file is answered "regular"."""

from __future__ import annotations

import base64
import json
import socket
import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request


def _app(root: Path) -> FastAPI:
    app = FastAPI()

    @app.post("/api/repos/create")
    async def create(request: Request) -> dict:
        body = await request.json()
        repo = f"{body.get('organization') or 'user'}/{body['name']}"
        (root / repo).mkdir(parents=True, exist_ok=True)
        app.state.created.append((body.get("type"), repo, body.get("visibility")))
        return {"url": f"{request.base_url}datasets/{repo}", "name": repo}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> dict:
        app.state.cards.append((await request.json())["content"])  # the README.md checked
        return {"errors": [], "warnings": []}

    @app.post("/api/{kind}/{owner}/{name}/preupload/{revision}")
    async def preupload(request: Request) -> dict:
        files = (await request.json())["files"]
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                          for f in files]}  # fmt: skip

    @app.post("/api/{kind}/{owner}/{name}/commit/{revision}")
    async def commit(request: Request, owner: str, name: str) -> dict:
        for line in (await request.body()).splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                target = root / owner / name / item["value"]["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(item["value"]["content"]))
        url = f"{request.base_url}datasets/{owner}/{name}/commit/0123abcd"
        return {"commitUrl": url, "commitOid": "0123abcd", "pullRequestUrl": None}

    app.state.created, app.state.cards = [], []
    return app


class HubStandIn:
    """``with HubStandIn(root) as hub: ... hub.url ...`` (uvicorn on a free local port)."""

    def __init__(self, root: Path) -> None:
        self.app = _app(root)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()
