"""fakewechat: a faithful simulator of the WeChat Official Account user tag API.

It serves every call of the seed's user tag management page with its rules and error
codes, the token endpoints, quotas and injectable faults, plus ``/_sim/*`` endpoints that
tests use to configure faults and read what happened. It imports nothing of tagsync.

A call flows: ``server`` (the HTTP front) -> ``platform`` (which app, or the component,
it is for) -> ``simulator`` (one app's rules and state, ``AppState``) or ``component`` (a
third-party platform's tickets, tokens and authorizations). Beside them: ``config`` the
typed faults and limits; ``stats`` what an app saw; ``tokens`` the access tokens;
``errors`` WeChat's error answers; ``openids`` the fans; ``endpoints`` the ``/_sim/*``
test endpoints.
"""

from fakewechat.component import Component
from fakewechat.openids import FanDirectory, prefix_for
from fakewechat.platform import Platform
from fakewechat.server import SimulatorServer, serve_in_thread
from fakewechat.simulator import Simulator

#: The AppID the simulator serves unless told otherwise.
DEFAULT_APPID = "wx5f1d0c0ffee0tag"
#: The app secret the simulator accepts unless told otherwise.
DEFAULT_SECRET = "fakewechat-demo-secret-0123456789"

__all__ = [
    "DEFAULT_APPID",
    "DEFAULT_SECRET",
    "Component",
    "FanDirectory",
    "Platform",
    "Simulator",
    "SimulatorServer",
    "prefix_for",
    "serve_in_thread",
]
