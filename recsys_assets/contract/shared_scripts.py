"""HTML reports that share one stored copy of a large script rather than each inlining its own.

Public: `LIB`, `detach`, `inline`, `lib_key`.

A drift report is Evidently's page, about 3.8 MB, of which 3.5 MB is Evidently's renderer (`index.js`)
inlined; one report is written per live window (24 a day at the default hour), so nearly all of what the
monitoring stores would be copies of one file. `detach` swaps an inlined script for a reference to a file
in a `lib/` folder beside the report's own folder (`drift/lib/evidently-<version>.js` for
`drift/<window>/report.html`), which the writer stores once; the name carries the version, so a report
keeps the renderer it was made with after an upgrade. A browser opening the report in its folder (local,
or a blob container served over HTTP) loads the script from there. `inline` puts the scripts back for a
viewer that shows the page from a string (the console: Streamlit's `components.html` has no base URL).

Evidently has a folder mode of its own (`SaveMode.FOLDER` of its legacy reports, a `js/` folder per
report), which would still write the renderer once per report.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping

LIB = "lib"
_REFERENCE = re.compile(rf'<script src="\.\./{LIB}/([A-Za-z0-9_-][A-Za-z0-9._-]*)"></script>')


def _reference(name: str) -> str:
    return f'<script src="../{LIB}/{name}"></script>'


def detach(html: str, scripts: Mapping[str, str]) -> tuple[str, list[str]]:
    """`html` with each of `scripts` (file name -> text) that it inlines (`<script>text</script>`) replaced by
    a reference to `../lib/<name>`, and the names it now refers to. A page that inlines none is returned as it
    is, so a renderer that changed its page only costs the space."""
    used = []
    for name, text in scripts.items():
        if not _REFERENCE.fullmatch(_reference(name)):
            raise ValueError(f"script name {name!r} must be letters, digits, '.', '_' or '-', not starting with '.'")
        inlined = f"<script>{text}</script>"
        if inlined in html:
            html = html.replace(inlined, _reference(name))
            used.append(name)
    return html, used


def inline(html: str, read: Callable[[str], str | None]) -> str:
    """`html` with each reference `detach` made replaced by the script's text, `read(name)`; a reference whose
    script `read` does not find (None) is left as it is."""

    def put(match: re.Match[str]) -> str:
        text = read(match.group(1))
        return match.group(0) if text is None else f"<script>{text}</script>"

    return _REFERENCE.sub(put, html)


def lib_key(report_key: str, name: str) -> str:
    """The storage key of script `name` for the report stored at `report_key` ("drift/w/report.html" ->
    "drift/lib/<name>")."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(report_key), "..", LIB, name))
