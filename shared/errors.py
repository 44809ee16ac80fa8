"""The edgesync exception tree.

Every error an operator or a peer can cause has a class here, so that callers
handle categories, not strings. Third-party exceptions (websockets, aioquic,
SQLAlchemy, cryptography) are translated into these at the boundary that
meets them.

    EdgesyncError
    ├── ConfigError                 bad YAML, unknown key, wrong type (names file and key)
    ├── ProtocolError               the conversation broke the protocol
    │   ├── LocalProtocolError      we tried to do something the protocol forbids (a bug here)
    │   └── RemoteProtocolError     the peer sent something the protocol forbids
    │       ├── FrameTooLarge       a frame above the configured limit (checked before parsing)
    │       ├── MalformedMessage    not JSON, wrong types, limits exceeded while parsing
    │       ├── UnknownOperation    an `op` this version does not know
    │       └── UnsupportedVersion  no protocol version in common
    ├── AuthError                   identity or permission problems
    │   ├── Forbidden               a node touched a resource that is not its own
    │   └── JoinError               a join token or CSR was refused
    ├── PKIError                    certificate/key material is missing or invalid
    │   └── CertificateRefused      a peer's certificate fails the policy (`reason` says why)
    ├── ResourceError               an operator's resource document is invalid
    ├── RunRefused                  the edge refused to start a run (env, workdir, user policy)
    ├── NotFound                    a named object does not exist
    ├── StoreError                  the database failed (disk full, locked, unreachable)
    │   └── OutboxFull              the edge outbox is at its bound with rows it may not drop
    └── LinkError                   the connection to the peer is gone
        ├── LinkClosed              we closed it (ClosedResourceError in trio terms)
        └── LinkBroken              the network or the peer broke it (retry with backoff)
            ├── PeerClosed          the peer closed it cleanly (normal close, going away)
            └── IdentityRefused     the peer refused our certificate (also an AuthError: fatal)
"""

from __future__ import annotations


class EdgesyncError(Exception):
    """Base of every error edgesync raises on purpose."""


class ConfigError(EdgesyncError):
    """Configuration is invalid; the message names the file and the key."""


class ProtocolError(EdgesyncError):
    """The sync protocol was violated. `code` is sent to the peer in an `error` message."""

    code = "protocol_error"


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow: a bug in edgesync."""

    code = "local_protocol_error"


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""

    code = "bad_message"


class FrameTooLarge(RemoteProtocolError):
    """A frame is larger than the configured `max_frame_bytes`; rejected before parsing."""

    code = "frame_too_large"


class MalformedMessage(RemoteProtocolError):
    """A frame is not a valid envelope (syntax, types, nesting or size limits)."""

    code = "malformed"


class UnknownOperation(RemoteProtocolError):
    """The envelope's `op` is not one this protocol version defines."""

    code = "unknown_op"


class UnsupportedVersion(RemoteProtocolError):
    """The peers share no protocol version."""

    code = "unsupported_version"


class AuthError(EdgesyncError):
    """An identity could not be established or was not allowed to do something."""

    code = "unauthorized"


class Forbidden(AuthError):
    """The authenticated node tried to read or write a resource that is not its own."""

    code = "forbidden"


class JoinError(AuthError):
    """A join was refused: bad, expired, reused or forged token, or a CSR that does not match."""

    code = "join_refused"


class PKIError(EdgesyncError):
    """Keys or certificates are missing, unreadable or do not verify."""


class CertificateRefused(PKIError):
    """A client certificate fails the cloud's policy (shared/certpolicy.py).

    `reason` is a short stable code (expired, foreign_ca, ...) used as a metric
    label; the message says what the operator should do."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class ResourceError(EdgesyncError):
    """An operator-supplied resource (task YAML, etc.) is invalid; the message says which field."""


class RunRefused(EdgesyncError):
    """The edge refused to start a task run: an env variable, the workdir or the user to run
    as breaks the node's policy. The run ends `failed` with this message; fix the task or
    the node's `runtime.*` settings."""


class NotFound(EdgesyncError):
    """The named object does not exist."""


class StoreError(EdgesyncError):
    """The database failed: disk full, locked, unreachable or corrupt."""


class OutboxFull(StoreError):
    """The edge outbox holds `outbox_max_rows` rows that may not be dropped (results, twin
    reports): nothing was enqueued. The cloud has been unreachable for long; raise the
    bound (disk permitting) or restore the link."""


class LinkError(EdgesyncError):
    """The connection to the peer is not usable."""


class LinkClosed(LinkError):
    """This side closed the link; do not retry."""


class LinkBroken(LinkError):
    """The network or the peer broke the link; reconnect with backoff."""


class PeerClosed(LinkBroken):
    """The peer closed the link cleanly (WebSocket 1000/1001); reconnect as usual."""


class IdentityRefused(LinkBroken, AuthError):
    """The peer refused our certificate after the transport handshake (TLS 1.3 reports
    this on the first read). Retrying will not help until an operator re-joins the node."""
