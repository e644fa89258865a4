"""
Which URL paths run a script, which serve a file, and which go to the front
controller: nginx's try_files and fastcgi_split_path_info, without ever
running a file that is not an existing ``*.php`` inside the document root.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from txfastcgi._http.routing import FoundFile, Redirect, Refused, Router, Script, StaticFile


@pytest.fixture
def root(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    for name in ["index.php", "a.php", "dir/index.php", "empty/.keep", "uploads/evil.jpg"]:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("x")
    (site / "style.css").write_text("body{}")
    for name in ["config.php.bak", "config.php~", "lib.inc", "a.phtml", "node.module", "x.install"]:
        (site / name).write_text("<?php secret")
    (site / "X.PHP").write_text("<?php secret")
    (site / ".env").write_text("SECRET=1")
    (tmp_path / "outside.php").write_text("<?php")
    (site / "link.php").symlink_to(tmp_path / "outside.php")
    return site


def router(root: Path, frontController: str | None = "/index.php") -> Router:
    return Router(str(root), "index.php", frontController)


def script(root: Path, relative: str, scriptName: str, pathInfo: str = "") -> Script:
    return Script(os.path.join(str(root), relative), scriptName, pathInfo)


def test_an_existing_script_runs(root: Path) -> None:
    assert router(root).route(b"/a.php") == script(root, "a.php", "/a.php")


def test_path_info_after_a_script_is_split_off(root: Path) -> None:
    assert router(root).route(b"/a.php/extra/path") == script(
        root, "a.php", "/a.php", "/extra/path"
    )
    assert router(root).route(b"/a.php/") == script(root, "a.php", "/a.php", "/")
    assert router(root).route(b"/a.php/x/") == script(root, "a.php", "/a.php", "/x/")


def test_a_static_file_is_served(root: Path) -> None:
    assert router(root).route(b"/style.css") == StaticFile(str(root / "style.css"))


def test_a_directory_runs_its_index_and_needs_its_trailing_slash(root: Path) -> None:
    assert router(root).route(b"/dir/") == script(root, "dir/index.php", "/dir/index.php")
    assert router(root).route(b"/dir") == Redirect()
    assert router(root).route(b"/") == script(root, "index.php", "/index.php")


def test_a_directory_without_index_is_forbidden(root: Path) -> None:
    assert router(root).route(b"/empty/") == Refused(403, "This directory has no index.")


def test_a_path_naming_nothing_goes_to_the_front_controller(root: Path) -> None:
    assert router(root).route(b"/2024/01/hello-world/") == script(root, "index.php", "/index.php")
    assert router(root).route(b"/missing.php") == script(root, "index.php", "/index.php")


def test_without_a_front_controller_a_path_naming_nothing_is_404(root: Path) -> None:
    assert router(root, None).route(b"/nothing") == Refused(404, "No such page.")


def test_a_missing_front_controller_is_404(root: Path) -> None:
    assert router(root, "/gone.php").route(b"/nothing") == Refused(404, "No such page.")


def test_a_file_used_as_a_directory_never_runs_as_a_script(root: Path) -> None:
    # cgi.fix_pathinfo: php-fpm would run evil.jpg if asked for /uploads/evil.jpg/x.php.
    route = router(root, None).route(b"/uploads/evil.jpg/x.php")
    assert route == Refused(404, "No such page.")


def test_dot_segments_are_resolved_and_cannot_leave_the_root(root: Path) -> None:
    assert router(root).route(b"/dir/../a.php") == script(root, "a.php", "/a.php")
    assert router(root).route(b"/./a.php") == script(root, "a.php", "/a.php")
    assert router(root).route(b"/../site/a.php") == Refused(
        400, "The request path leaves the document root."
    )


def test_a_symbolic_link_out_of_the_root_is_not_run(root: Path) -> None:
    assert router(root, None).route(b"/link.php") == Refused(404, "No such page.")


@pytest.mark.parametrize("character", [b"\x00", b"\n", b"\r", b"\x1f", b"\x7f"])
def test_control_characters_in_the_path_are_a_bad_request(root: Path, character: bytes) -> None:
    # CVE-2019-11043: /index.php/PHP%0Ais_the_shittiest_lang.php
    route = router(root).route(b"/index.php/PHP" + character + b"is.php")
    assert route == Refused(400, "The request path contains a control character.")


@pytest.mark.parametrize(
    "path",
    [
        b"/config.php.bak",
        b"/X.PHP",
        b"/config.php~",
        b"/lib.inc",
        b"/a.phtml",
        b"/node.module",
        b"/x.install",
    ],
)
def test_php_source_under_other_names_is_never_served(root: Path, path: bytes) -> None:
    assert router(root).route(path) == Refused(403, "Script source is not served.")


def test_only_an_ascii_php_suffix_makes_a_script(root: Path) -> None:
    (root / "shell.\uff50hp").write_text("<?php")
    assert router(root).route("/shell.\uff50hp".encode()) == StaticFile(
        str(root / "shell.\uff50hp")
    )


def test_hidden_files_are_refused(root: Path) -> None:
    assert router(root).route(b"/.env") == Refused(403, "Hidden files are not served.")


def remembering(root: Path, remembered: int = 4096) -> Router:
    """A router whose clock is a minute ahead: files just written are old enough to remember."""
    return Router(
        str(root), "index.php", "/index.php", remembered=remembered, clock=lambda: time.time() + 60
    )


def countLstats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the router walks through from now on, one C{lstat} each."""
    walked: list[str] = []
    lstat = os.lstat

    def counting(path: str) -> os.stat_result:
        walked.append(path)
        return lstat(path)

    monkeypatch.setattr("txfastcgi._http.routing.os.lstat", counting)
    return walked


def test_a_static_file_comes_with_the_stat_taken_of_it(root: Path) -> None:
    route = router(root).route(b"/style.css")
    assert isinstance(route, StaticFile) and isinstance(route.filename, FoundFile)
    assert route.filename.info.st_size == len("body{}")
    assert route.filename.info.st_ino == os.stat(root / "style.css").st_ino


def test_a_path_found_before_is_found_again_without_a_walk(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = remembering(root)
    lstats = countLstats(monkeypatch)
    (root / "dir" / "deep").mkdir()
    (root / "dir" / "deep" / "page.css").write_text("x")
    first = found.route(b"/dir/deep/page.css")
    walked = len(lstats)
    again = found.route(b"/dir/deep/page.css")
    assert again == first == StaticFile(str(root / "dir" / "deep" / "page.css"))
    assert isinstance(again, StaticFile) and isinstance(again.filename, FoundFile)
    assert (walked, len(lstats)) == (3, 3)
    assert found.route(b"/a.php/more") == found.route(b"/a.php/more")
    assert len(lstats) == 4


def test_a_file_just_changed_is_walked_to_again(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its filesystem's clock may be too coarse to tell it from the next version.
    found = router(root)
    lstats = countLstats(monkeypatch)
    found.route(b"/style.css")
    found.route(b"/style.css")
    assert len(lstats) == 2


def test_a_remembered_file_replaced_by_a_directory_is_walked_to_again(root: Path) -> None:
    found = remembering(root)
    assert found.route(b"/style.css") == StaticFile(str(root / "style.css"))
    (root / "style.css").unlink()
    (root / "style.css").mkdir()
    assert found.route(b"/style.css") == Redirect()


def test_a_remembered_file_gone_goes_to_the_front_controller(root: Path) -> None:
    found = remembering(root)
    found.route(b"/style.css")
    (root / "style.css").unlink()
    assert found.route(b"/style.css") == script(root, "index.php", "/index.php")


def test_a_remembered_directory_made_a_link_out_of_the_root_leads_nowhere(
    root: Path, tmp_path: Path
) -> None:
    found = remembering(root)
    (root / "assets").mkdir()
    (root / "assets" / "app.js").write_text("inside")
    assert found.route(b"/assets/app.js") == StaticFile(str(root / "assets" / "app.js"))
    (root / "assets").rename(tmp_path / "elsewhere")
    (root / "assets").symlink_to(tmp_path / "elsewhere")
    # The same file through the link: still the file that was inside.
    assert found.route(b"/assets/app.js") == StaticFile(str(root / "assets" / "app.js"))
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "app.js").write_text("outside")
    (root / "assets").unlink()
    (root / "assets").symlink_to(tmp_path / "secret")
    assert found.route(b"/assets/app.js") == script(root, "index.php", "/index.php")


def test_a_file_rewritten_in_place_is_walked_to_again(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = remembering(root)
    lstats = countLstats(monkeypatch)
    found.route(b"/style.css")
    (root / "style.css").write_text("body{color:red}")
    route = found.route(b"/style.css")
    assert isinstance(route, StaticFile) and isinstance(route.filename, FoundFile)
    assert route.filename.info.st_size == len("body{color:red}")
    assert len(lstats) == 2


def test_the_paths_remembered_are_bounded_the_first_going_first(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = remembering(root, remembered=2)
    lstats = countLstats(monkeypatch)
    for path in [b"/style.css", b"/a.php", b"/X.PHP", b"/dir/index.php", b"/style.css"]:
        found.route(path)
    # X.PHP is refused, not remembered; dir/index.php pushes style.css out.
    assert len(lstats) == 1 + 1 + 1 + 2 + 1
