"""Dependency-aware answering: which questions of a group depend on which.

A generator infers edges (parent question -> dependent question), :func:`select_edges`
keeps the confident, cheap ones as an acyclic graph, :func:`layers` turns that into
batches (each layer one batch, parents' answers in children's prompts), and
:func:`render_group_html` draws a group's graph, answers and costs on one page.
"""

from paralleldecode.dependencies.graph import DependencyGenerator, DependencyResult, Edge
from paralleldecode.dependencies.heuristic import HeuristicGenerator
from paralleldecode.dependencies.html_view import render_group_html, write_group_html
from paralleldecode.dependencies.scheduler import ideal_latency, layers, parents
from paralleldecode.dependencies.selection import select_edges

__all__ = [
    "DependencyGenerator", "DependencyResult", "Edge", "HeuristicGenerator", "ideal_latency",
    "layers", "parents", "render_group_html", "select_edges", "write_group_html",
]
