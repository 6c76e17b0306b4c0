"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link, anchor, page or API reference
fails it), the README stays short and its links resolve, and the quickstart's figures agree wherever they appear."""

import os
import re
import subprocess
import sys

import pytest

from .conftest import ROOT

README = open(os.path.join(ROOT, "README.md")).read()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    folder = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_the_site_builds_strictly_with_every_page_and_the_api_reference(site):
    pages = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
    assert len(pages) >= 15
    for page in pages:
        assert os.path.isfile(site / ("index.html" if page == "index" else os.path.join(page, "index.html"))), page
    reference = (site / "reference" / "index.html").read_text()
    for name in ("adet.api.load", "adet.api.Model", "adet.engine.training.trainer.DefaultTrainer"):
        assert f'id="{name}"' in reference, name


def test_the_readme_is_short_and_its_links_resolve(site):
    assert len(README.splitlines()) <= 150
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert len(local) >= 15
    for link in local:
        path, _, anchor = link.partition("#")
        assert os.path.exists(os.path.join(ROOT, path)), link
        if anchor:  # a docs page's heading, as the site renders its id
            page = os.path.splitext(os.path.relpath(path, "docs"))[0]
            html = (site / ("index.html" if page == "index" else os.path.join(page, "index.html"))).read_text()
            assert f'id="{anchor}"' in html, link


def test_the_quickstart_figures_agree_everywhere():
    """The table the README shows is the quickstart's own output format, and the same figures are on the docs'
    quick start page and in both results tables."""
    block = README.split("<!-- quickstart-result -->")[1].split("<!-- /quickstart-result -->")[0]
    table = block.split("```text\n")[1].split("```")[0]
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in table.splitlines()[2:]}
    assert set(rows) == {"bbox", "segm"} and all(len(values) == 3 for values in rows.values())
    assert table.splitlines()[1] == f"{'':6}{'AP':>7}{'AP50':>7}{'AP75':>7}"  # as adet/cli/quickstart.py prints
    for task, values in rows.items():
        assert table.splitlines()[1 + ("bbox", "segm").index(task) + 1] == (
            f"{task:6}" + "".join(f"{v:>7.1f}" for v in values))
    assert table in open(os.path.join(ROOT, "docs", "quickstart.md")).read()
    expected_row = f"| {rows['bbox'][0]:.1f} | {rows['segm'][0]:.1f} |"
    assert expected_row in README and expected_row in open(os.path.join(ROOT, "docs", "benchmarks.md")).read()
