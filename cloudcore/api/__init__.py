"""The operator API and join endpoint: routes, typed bodies, and the generated contract."""

from cloudcore.api.routes import Api

__all__ = ["Api"]
