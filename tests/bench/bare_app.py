"""The baseline: a bare Litestar POST handler that answers 200, served the same way."""

from litestar import Litestar, post


@post("/dispatch", status_code=200)
async def dispatch() -> bytes:
    return b'{"status":"ok"}'


app = Litestar([dispatch])
