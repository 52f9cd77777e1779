"""The report as JUnit XML: one ``<testcase>`` per entry, per declared check and per nightly history metric.

* entry: **failure** when a claim is contradicted, its gsm8k got significantly worse or a check failed
  (type ``regression``), or when drift needs a human — conflict, obsolete, applies-but-no-effect, error
  (type ``drift``); **skipped** when nothing about it could be decided (claims unknown / not measured and
  no drift result); passed otherwise ("not-met" claims pass but are named in the output);
* check: failure when it failed, skipped when it was not run;
* nightly history: failure when the newest change point of the top of the stack is a change for the worse.

CI systems (GitHub test reporters, GitLab, Jenkins) show these per case; the full commit-message lines are in
each case's ``<system-out>``.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from collections.abc import Mapping


def _case(parent: ET.Element, classname: str, name: str, *, failure: tuple[str, str, str] | None = None,
          skipped: str | None = None, out: str = "") -> str:
    tc = ET.SubElement(parent, "testcase", classname=classname, name=name, time="0")
    if failure:
        typ, msg, text = failure
        f = ET.SubElement(tc, "failure", type=typ, message=msg[:1000])
        f.text = text
        res = "failure"
    elif skipped is not None:
        ET.SubElement(tc, "skipped", message=skipped[:1000])
        res = "skipped"
    else:
        res = "passed"
    if out:
        ET.SubElement(tc, "system-out").text = out
    return res


def _entry_text(e: Mapping[str, Any]) -> str:
    lines = [f"{e['index']}. {e['id']}: {e['title']}", f"tree {e.get('tree') or 'not measured'}"]
    if e.get("drift"):
        lines.append(f"drift: {e['drift']['status']} {e['drift'].get('detail') or ''}".rstrip())
    lines += [m["describe"] for m in e["metrics"]]
    lines += [a["describe"] for a in e["accuracy"]]
    lines += [f"claim {c['text']}: {c['status']} — {c['reason']}" for c in e["claims"]]
    return "\n".join(lines)


def render(report: Mapping[str, Any], *, suite: str = "vpatch") -> str:
    """JUnit XML text for ``report`` (a :meth:`Report.as_dict` document)."""
    root = ET.Element("testsuites", name=suite)
    ts = ET.SubElement(root, "testsuite", name=f"{suite} {report['series']} on {report['base'] or '?'}")
    props = ET.SubElement(ts, "properties")
    for k, v in (("base", report.get("base")), ("headline", report["summary"]["headline"]),
                 ("upstream.from", (report.get("upstream") or {}).get("from")),
                 ("upstream.to", (report.get("upstream") or {}).get("to"))):
        if v:
            ET.SubElement(props, "property", name=k, value=str(v))
    counts = {"passed": 0, "failure": 0, "skipped": 0}
    for e in report["entries"]:
        name = f"{e['index']:02d} {e['id']}"
        out = _entry_text(e)
        if e["outcome"] == "needs-human":
            res = _case(ts, "vpatch.entry", name, failure=("drift", e["outcome_reason"], out), out=out)
        elif e["outcome"] == "failed":
            res = _case(ts, "vpatch.entry", name, failure=("regression", e["outcome_reason"], out), out=out)
        elif e["outcome"] != "passed":  # unknown, not checked, not measured, upstream: no evidence, no pass
            res = _case(ts, "vpatch.entry", name, skipped=f"{e['outcome']}: {e['outcome_reason']}", out=out)
        else:
            res = _case(ts, "vpatch.entry", name, out=out + ("\n" + e["outcome_reason"] if e["outcome_reason"] else ""))
        counts[res] += 1
        for c in e["checks"]:
            cname = f"{e['index']:02d} {e['id']}: {c['name']}"
            if c["status"] == "failed":
                res = _case(ts, "vpatch.check", cname, failure=("check", f"check failed: {c['name']}", c["detail"]),
                            out=c["detail"])
            elif c["status"] == "passed":
                res = _case(ts, "vpatch.check", cname, out=c["detail"])
            else:
                res = _case(ts, "vpatch.check", cname, skipped=c["detail"] or "not run")
            counts[res] += 1
    for h in report["history"]:
        cps = h["change_points"]
        out = "\n".join(f"change point {cp['day']} ({cp.get('previous_base')} → {cp.get('base')}): {cp['describe']}"
                        for cp in cps) or f"{len(h['points'])} nights, no change points"
        if cps and cps[-1]["direction"] == "worse":
            res = _case(ts, "vpatch.nightly", f"{h['label']} history",
                        failure=("regression", f"{h['label']} got worse from {cps[-1]['day']}: {cps[-1]['describe']}", out),
                        out=out)
        else:
            res = _case(ts, "vpatch.nightly", f"{h['label']} history", out=out)
        counts[res] += 1
    total = sum(counts.values())
    for el in (ts, root):
        el.set("tests", str(total))
        el.set("failures", str(counts["failure"]))
        el.set("errors", "0")
        el.set("skipped", str(counts["skipped"]))
    ts.set("timestamp", _iso(report["generated_at"]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _iso(ts: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
