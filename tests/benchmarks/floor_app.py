"""The floor for the booking benchmark: a bare FastAPI GET served by the same uvicorn settings
as `pimlab serve` (`python floor_app.py PORT`). Nothing a request to the lab's services does
can cost less than this."""

from __future__ import annotations

import sys

from fastapi import FastAPI

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/")
async def root():
    return {"status": "ok", "service": "floor"}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
