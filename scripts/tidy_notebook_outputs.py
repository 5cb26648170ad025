"""Tidy an executed notebook's stream outputs in place, so the committed file reads like the screen did.

`jupyter nbconvert --execute` stores every progress-bar refresh (tqdm redraws its line with carriage returns) as a
separate output: a 24-epoch run leaves thousands of them, and GitHub shows each one. This merges a cell's stdout
and stderr chunks and keeps only what a terminal would still show, the way nbclient's ``coalesce_streams`` does
(that option cannot be set from nbconvert's command line). Outputs other than streams are untouched, and so are
cells tagged ``nbval-check-output``: nbval compares those with a fresh run character for character.

    python scripts/tidy_notebook_outputs.py notebooks/01_pytorch_onecycle.ipynb [...]
"""
from __future__ import annotations

import re
import sys

import nbformat

CONTROL = re.compile(r"(\x1b\[A|\r|\n|\x08)")  # cursor up (tqdm's nested bars), carriage return, newline, backspace


def screen_text(text: str) -> str:
    """What a terminal shows after printing ``text``: redrawn lines keep their last state, blank lines go."""
    lines, row, col = [""], 0, 0
    for piece in CONTROL.split(text):
        if piece == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif piece == "\r":
            col = 0
        elif piece == "\x1b[A":
            row = max(row - 1, 0)
        elif piece == "\x08":
            col = max(col - 1, 0)
        elif piece:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + piece + line[col + len(piece):]
            col += len(piece)
    return "".join(line.rstrip() + "\n" for line in lines if line.strip())


def tidy_cell(cell) -> None:
    outputs, streams = [], {}
    for output in cell.get("outputs", []):
        if output["output_type"] != "stream":
            outputs.append(output)
        elif output["name"] in streams:
            streams[output["name"]]["text"] += output["text"]
        else:
            streams[output["name"]] = output
            outputs.append(output)
    for output in streams.values():
        output["text"] = screen_text(output["text"])
    cell["outputs"] = [o for o in outputs if o["output_type"] != "stream" or o["text"]]


def main(paths: list[str]) -> None:
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and "nbval-check-output" not in cell.metadata.get("tags", []):
                tidy_cell(cell)
        nbformat.write(nb, path)


if __name__ == "__main__":
    main(sys.argv[1:])
