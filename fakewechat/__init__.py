"""fakewechat: a faithful simulator of the WeChat Official Account user tag API.

It serves every call of the seed's user tag management page with its rules and error
codes, the token endpoints, quotas and injectable faults, plus ``/_sim/*`` endpoints that
tests use to configure faults and read what happened. It imports nothing of tagsync.

``simulator`` holds the rules and an account's state (``AppState``); ``config`` the typed
faults and limits; ``stats`` what it saw; ``tokens`` the access tokens; ``errors`` WeChat's
error answers; ``openids`` the fans; ``server`` the HTTP front.
"""

from fakewechat.openids import FanDirectory, prefix_for
from fakewechat.server import SimulatorServer, serve_in_thread
from fakewechat.simulator import Simulator

#: The AppID the simulator serves unless told otherwise.
DEFAULT_APPID = "wx5f1d0c0ffee0tag"
#: The app secret the simulator accepts unless told otherwise.
DEFAULT_SECRET = "fakewechat-demo-secret-0123456789"

__all__ = [
    "DEFAULT_APPID",
    "DEFAULT_SECRET",
    "FanDirectory",
    "Simulator",
    "SimulatorServer",
    "prefix_for",
    "serve_in_thread",
]
