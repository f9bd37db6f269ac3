"""Reports that share one stored copy of a script: detached on write, put back inline for the console."""

from __future__ import annotations

import pytest

from recsys_assets.contract import shared_scripts

PAGE = "<html><head><script>var lib = 1; // </script-ish</script><script>var data = 2;</script></head></html>"
LIB = {"lib-1.0.js": "var lib = 1; // </script-ish"}


def test_detach_refers_to_the_lib_folder_and_inline_puts_it_back() -> None:
    page, used = shared_scripts.detach(PAGE, LIB)
    assert used == ["lib-1.0.js"]
    assert '<script src="../lib/lib-1.0.js"></script>' in page and "var lib" not in page
    assert "<script>var data = 2;</script>" in page  # a script it was not given stays
    assert shared_scripts.inline(page, LIB.get) == PAGE


def test_a_page_without_the_script_is_kept_and_an_unknown_reference_left() -> None:
    assert shared_scripts.detach(PAGE, {"other.js": "var other;"}) == (PAGE, [])
    page, _ = shared_scripts.detach(PAGE, LIB)
    assert shared_scripts.inline(page, lambda name: None) == page


def test_names_that_would_leave_the_lib_folder_are_refused() -> None:
    for bad in ("../x.js", "..", ".hidden.js", "a/b.js", "a b.js", ""):
        with pytest.raises(ValueError, match="script name"):
            shared_scripts.detach(PAGE, {bad: "var lib = 1; // </script-ish"})


def test_the_lib_key_is_beside_the_report_folder() -> None:
    assert shared_scripts.lib_key("drift/2026-01-01T00/report.html", "e.js") == "drift/lib/e.js"
    assert shared_scripts.lib_key("/data/drift/w/report.html", "e.js") == "/data/drift/lib/e.js"
