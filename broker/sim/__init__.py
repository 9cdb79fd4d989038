"""A simulated IB_MCP: IB_MCP's tools and payload shapes, backed by a deterministic paper market.

market = MarketSimulator(["AAPL", "TSLA"], seed=7)
server = build_sim_server(market)                       # an MCPServer, for in-process clients
async with serve_sim_http(market, port=0) as url: ...   # or over streamable HTTP
"""

from broker.sim.accounting import CommissionSchedule
from broker.sim.errors import GatewayError
from broker.sim.faults import FaultPlan
from broker.sim.instruments import Instrument, instrument_for
from broker.sim.market import MarketSimulator, PositionView, SimQuote, StartingPosition
from broker.sim.orders import Execution, SimOrder
from broker.sim.prices import Bar, WalkSettings, load_bars_csv
from broker.sim.server import build_sim_http_app, build_sim_server, run_market_clock, serve_sim_http

__all__ = [
    "Bar",
    "CommissionSchedule",
    "Execution",
    "FaultPlan",
    "GatewayError",
    "Instrument",
    "MarketSimulator",
    "PositionView",
    "SimOrder",
    "SimQuote",
    "StartingPosition",
    "WalkSettings",
    "build_sim_http_app",
    "build_sim_server",
    "instrument_for",
    "load_bars_csv",
    "run_market_clock",
    "serve_sim_http",
]
