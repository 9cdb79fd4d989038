"""Replay and backtest: recorded bars through the real poller, bus, workflows, risk engine and simulated IB_MCP.

    report = await run_replay(ReplayConfig(bars=load_bars_csv("bars.csv"), triggers=specs), settings)
    write_report(report, Path("report_dir"))      # report.json and report.html

`replay.suggest` reviews a report and proposes parameter changes, each replayed before and after.
"""
