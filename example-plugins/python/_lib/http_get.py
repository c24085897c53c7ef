"""Blocking HTTP requests over the runner's wasi:http, for plugins built with componentize-py.

componentize-py gives Python the world's imports as modules; this is the little a job needs on
top of them: send the request, wait for the response, read the body. Python's own `urllib`
and `http.client` need sockets, which a guest does not have.
"""

from dataclasses import dataclass
from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as http


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), as text."""
        name = name.lower()
        return next((v.decode() for k, v in self.headers if k.lower() == name), None)

    def retry_after(self) -> float | None:
        """The Retry-After header in its seconds form (GitHub's and Slack's)."""
        value = self.header("retry-after")
        return float(value) if value and value.strip().isdigit() else None


class HttpError(Exception):
    """No response: the runner refused the request, or it failed on the way."""

    def __init__(self, code):
        self.code = code
        super().__init__(describe(code))

    @property
    def refused(self) -> bool:
        """The runner refused it by policy: retrying cannot help."""
        return isinstance(self.code, (http.ErrorCode_HttpRequestDenied, http.ErrorCode_DestinationIpProhibited))


def describe(code) -> str:
    if isinstance(code, http.ErrorCode_HttpRequestDenied):
        return "request denied: the host is not granted to this plugin"
    if isinstance(code, http.ErrorCode_DestinationIpProhibited):
        return "request denied: the host's address is in a network the runner blocks"
    return f"http error: {type(code).__name__.removeprefix('ErrorCode_')}"


def get(url: str, headers: dict[str, str] | None = None) -> Reply:
    """GET `url`, its body read whole."""
    return request("GET", url, headers)


def request(method: str, url: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> Reply:
    """Sends `method` to `url` with `headers` and `body`; the response, its body read whole."""
    parts = urlsplit(url)
    scheme = {"http": http.Scheme_Http(), "https": http.Scheme_Https()}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    fields = http.Fields.from_list([(k, v.encode()) for k, v in (headers or {}).items()])
    outgoing = http.OutgoingRequest(fields)
    outgoing.set_method({"GET": http.Method_Get(), "POST": http.Method_Post()}[method])
    outgoing.set_scheme(scheme)
    outgoing.set_authority(parts.netloc)
    outgoing.set_path_with_query(parts.path + (f"?{parts.query}" if parts.query else "") or "/")
    sink = outgoing.body()
    try:
        pending = outgoing_handler.handle(outgoing, None)
    except Err as error:
        raise HttpError(error.value)
    if body:
        # The output stream is the body's child: dropped (by `with`) before the body finishes.
        with sink.write() as stream:
            for start in range(0, len(body), 4096):  # wasi:io's most per blocking write
                stream.blocking_write_and_flush(body[start:start + 4096])
    http.OutgoingBody.finish(sink, None)
    while (result := pending.get()) is None:
        pending.subscribe().block()
    response = result.value.value if isinstance(result.value, Ok) else None
    if response is None:
        raise HttpError(result.value.value)
    status, headers = response.status(), response.headers().entries()
    incoming = response.consume()
    stream = incoming.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(65536))
        except Err as error:
            if isinstance(error.value, streams.StreamError_Closed):
                break
            code = http.http_error_code(error.value.value)
            raise HttpError(code) if code is not None else RuntimeError("the response body failed")
    return Reply(status, headers, b"".join(chunks))
