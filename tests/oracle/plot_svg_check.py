#!/usr/bin/env python3
"""tests/oracle/plot_svg_check.py — checks an SVG that `rlhf plot` drew (gnuplot's svg terminal) with
Python's XML parser: SVG LABEL:MIN_POINTS...

The file must be well-formed XML with an <svg> root; for each LABEL there must be exactly one plot
group (a <g id="gnuplot_plot_..."> whose <title> is LABEL) holding a coloured <path> with at least
MIN_POINTS points of data after the key sample; and there must be no plot group of another label.
Prints "plot_svg_check: ok ..." or one line per problem; exit 0 when all is well."""
import re
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.w3.org/2000/svg}"


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    root = ET.parse(argv[1]).getroot()
    if root.tag != NS + "svg":
        print(f"root element is {root.tag}, not svg")
        return 1
    groups = {}
    for g in root.iter(NS + "g"):
        if not g.get("id", "").startswith("gnuplot_plot_"):
            continue
        title = g.find(NS + "title")
        label = title.text if title is not None else None
        points = 0
        for p in g.iter(NS + "path"):
            if "rgb(" not in (p.get("stroke") or ""):
                continue
            # "M key L key M data L data ...": the data is the last move and what follows it
            moves = p.get("d", "").split("M")[1:]
            if moves:
                points = max(points, len(re.findall(r"[-0-9.]+,[-0-9.]+", moves[-1])))
        groups.setdefault(label, []).append(points)
    fails = []
    want = {}
    for spec in argv[2:]:
        label, _, n = spec.rpartition(":")
        want[label] = int(n)
    for label, n in want.items():
        got = groups.get(label, [])
        if len(got) != 1:
            fails.append(f"{label}: {len(got)} plot groups, want 1")
        elif got[0] < n:
            fails.append(f"{label}: its path has {got[0]} points, want at least {n}")
    for label in groups:
        if label not in want:
            fails.append(f"a plot group of {label!r}, which is not a run asked for")
    for f in fails:
        print(f)
    if fails:
        return 1
    print(f"plot_svg_check: ok {len(want)} runs, one path each")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
