"""``release.json`` (machine-readable decision) and its short table."""

from __future__ import annotations

from pathlib import Path

from ..utils import write_json

VERDICTS = {True: "pass", False: "FAIL", None: "info"}


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(report: dict, *, details: bool = True) -> str:
    """One line per check (value, threshold, verdict), then the decision."""
    rows = [
        (c["name"], _number(c["value"]), _number(c["threshold"]), VERDICTS[c["passed"]], c["detail"])
        for c in report["checks"]
    ]
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'check':<{width}}  {'value':>9}  {'threshold':>9}  verdict"]
    for name, value, threshold, verdict, detail in rows:
        lines.append(f"{name:<{width}}  {value:>9}  {threshold:>9}  {verdict:<7}" + (f"  {detail}" if details else ""))
    lines.append(decision_line(report))
    return "\n".join(lines)


def decision_line(report: dict) -> str:
    where = f" as version {report['pushed_version']} ({report['label']})" if report.get("pushed_version") else ""
    blocked = f"; failed: {', '.join(report['blocked_by'])}" if report["blocked_by"] else ""
    return f"decision: {report['decision'].upper()}{where}{blocked}"


def write_report(path: Path, report: dict) -> Path:
    write_json(path, report)
    return path
