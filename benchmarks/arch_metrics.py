"""Architecture figures of the svdh package: import arrows, cycles, long functions, duplicates.

    .venv/bin/python benchmarks/arch_metrics.py [--src src] [--list] [--long 60] [--json]

- import arrows: distinct (importer, imported) pairs between svdh modules, read by grimp from
  the real import statements (function-level imports included; ``TYPE_CHECKING`` imports too),
  and the same collapsed to the top-level packages (``svdh.core``, ``svdh.inference``, ...);
- cycles: strongly connected groups of modules (networkx), and the elementary cycles in them;
- functions over 60 and over 80 lines (``ast``: ``def`` line to last line, nested ones counted
  on their own as well), and the longest ones;
- duplicate pairs: the ``duplicates`` command over ``src/`` where it is on PATH.

``--src`` takes any checkout's ``src`` folder, so the figures of an old commit can be measured
from ``git archive REV | tar -x -C /tmp/rev`` without checking it out.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "svdh"


@dataclass(frozen=True)
class Function:
    path: str
    name: str
    line: int
    length: int


def import_graph(src: Path):
    """The module import graph of ``svdh`` under ``src`` as a networkx DiGraph (grimp)."""
    import grimp
    import networkx as nx

    sys.path.insert(0, str(src.resolve()))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]  # find the package under ``src``, not an installed one
    importlib.invalidate_caches()
    try:
        graph = grimp.build_graph(PACKAGE, cache_dir=None)
    finally:
        sys.path.remove(str(src.resolve()))
    g = nx.DiGraph()
    g.add_nodes_from(graph.modules)
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            g.add_edge(importer, imported)
    return g


def package_of(module: str) -> str:
    """``svdh.core.io`` -> ``svdh.core``; a top-level module (``svdh.experiment``) is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(g):
    import networkx as nx

    p = nx.DiGraph()
    for a, b in g.edges:
        pa, pb = package_of(a), package_of(b)
        if pa != pb and PACKAGE not in (pa, pb):
            p.add_edge(pa, pb)
    return p


def cycles(g, limit: int = 200) -> tuple[list[list[str]], list[list[str]]]:
    """Strongly connected groups (>1 module) and up to ``limit`` elementary cycles."""
    import networkx as nx

    groups = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    found: list[list[str]] = []
    for cycle in nx.simple_cycles(g):
        found.append(cycle)
        if len(found) >= limit:
            break
    return groups, found


def functions(src: Path) -> list[Function]:
    """Every ``def`` under ``src/svdh`` with its length in lines (def line to last line)."""
    out: list[Function] = []
    root = src / PACKAGE
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = str(path.relative_to(src))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                out.append(Function(rel, node.name, node.lineno, length))
    return out


def duplicate_pairs(src: Path) -> dict | None:
    """Pairs reported by ``duplicates --repo src`` (None where the command is absent)."""
    exe = shutil.which("duplicates")
    if exe is None:
        return None
    res = subprocess.run(
        [exe, "--repo", str(src), "--most", "200", "--seconds", "120"],
        capture_output=True,
        text=True,
        check=False,
    )
    rows = [ln for ln in res.stdout.splitlines() if re.match(r"^D\d+ ", ln)]
    more = re.search(r"\(\+(\d+) more pairs\)", res.stdout)
    total = len(rows) + (int(more.group(1)) if more else 0)
    boiler = sum("boilerplate" in r for r in rows)
    shape = sum("shape" in r and "boilerplate" not in r for r in rows)
    return {
        "pairs": total,
        "exact": len(rows) - boiler - shape,
        "shape": shape,
        "boilerplate": boiler,
        "rows": rows,
        "head": res.stdout.splitlines()[0] if res.stdout else "",
    }


def measure(src: Path, long_at: int = 60) -> dict:
    g = import_graph(src)
    p = package_graph(g)
    internal = g.subgraph([n for n in g.nodes if n.startswith(PACKAGE)])
    groups, found = cycles(internal)
    pgroups, pfound = cycles(p)
    fns = functions(src)
    fns.sort(key=lambda f: -f.length)
    return {
        "modules": internal.number_of_nodes(),
        "import_arrows": internal.number_of_edges(),
        "package_arrows": p.number_of_edges(),
        "cycle_groups": groups,
        "cycles": found,
        "package_cycle_groups": pgroups,
        "package_cycles": pfound,
        "functions": len(fns),
        "over_60": [f.__dict__ for f in fns if f.length > 60],
        "over_80": [f.__dict__ for f in fns if f.length > 80],
        "over_long": [f.__dict__ for f in fns if f.length > long_at],
        "duplicates": duplicate_pairs(src),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    ap.add_argument("--list", action="store_true", help="list long functions, cycles, duplicates")
    ap.add_argument("--long", type=int, default=60, help="length listed by --list (default 60)")
    ap.add_argument("--json", action="store_true", help="print everything as JSON")
    args = ap.parse_args(argv)
    m = measure(args.src, args.long)
    if args.json:
        print(json.dumps(m, indent=1))
        return 0
    dup = m["duplicates"]
    print(f"src: {args.src}")
    print(f"modules                          {m['modules']}")
    print(f"import arrows between modules    {m['import_arrows']}")
    print(f"import arrows between packages   {m['package_arrows']}")
    print(f"module cycles (SCC groups)       {len(m['cycle_groups'])}")
    print(f"module cycles (elementary)       {len(m['cycles'])}")
    print(f"package cycles (elementary)      {len(m['package_cycles'])}")
    print(f"functions                        {m['functions']}")
    print(f"functions over 60 lines          {len(m['over_60'])}")
    print(f"functions over 80 lines          {len(m['over_80'])}")
    if dup is None:
        print("duplicate pairs                  (duplicates not on PATH)")
    else:
        print(
            f"duplicate pairs                  {dup['pairs']} "
            f"(exact {dup['exact']}, shape {dup['shape']}, boilerplate {dup['boilerplate']})"
        )
    if args.list:
        print("\ncycles:")
        for c in m["cycles"]:
            print("  " + " -> ".join(c + c[:1]))
        print("package cycles:")
        for c in m["package_cycles"]:
            print("  " + " -> ".join(c + c[:1]))
        print(f"\nfunctions over {args.long} lines:")
        for f in m["over_long"]:
            print(f"  {f['length']:4d}  {f['path']}:{f['line']}  {f['name']}")
        if dup:
            print("\nduplicates:")
            print("  " + dup["head"])
            for r in dup["rows"]:
                print("  " + r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
