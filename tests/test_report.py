"""The HTML report is written through recpipe.storage: a local folder or any URI."""

from __future__ import annotations

from pathlib import Path

from recpipe import storage
from recpipe.report.html import html_table, write_report
from recpipe.storage import Location


def test_report_written_at_a_path_or_a_uri(tmp_path: Path) -> None:
    sections = [("Rows", html_table([{"model": "als", "ndcg@10": 0.25}], caption="metrics"))]
    local = write_report(tmp_path / "reports" / "index.html", title="t <1>", sections=sections)
    assert local == Location(tmp_path / "reports" / "index.html")
    page = (tmp_path / "reports" / "index.html").read_text()
    assert "<h1>t &lt;1&gt;</h1>" in page and "0.2500" in page
    # A viewfs:// mount of a local folder: a non-local scheme resolved by recpipe.storage.
    storage.configure({"fs.viewfs.mounttable.reporttest.link./r": f"file://{tmp_path / 'mnt'}"})
    remote = write_report("viewfs://reporttest/r/ds/index.html", title="t <1>", sections=sections)
    assert str(remote) == "viewfs://reporttest/r/ds/index.html"
    assert storage.read_text(remote) == page
    assert (tmp_path / "mnt" / "ds" / "index.html").read_text() == page
    assert sorted(p.name for p in (tmp_path / "mnt" / "ds").iterdir()) == ["index.html"]


def test_loss_parts_get_a_figure_only_when_a_model_records_them() -> None:
    import base64
    import io

    from PIL import Image

    from recpipe.report.html import loss_part_curves

    plain = {"bpr_mf": [{"epoch": 1, "loss": 0.7}, {"epoch": 2, "loss": 0.5}]}
    assert loss_part_curves(plain, "leave_last_out") is None
    gan = [
        {"epoch": e, "loss": 1.0, "parts": {"discriminator": 0.9 - e / 10, "generator": 0.1}}
        for e in (1, 2, 3)
    ]
    uri = loss_part_curves({**plain, "irgan": gan}, "leave_last_out")
    assert uri is not None and uri.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert png.width > png.height  # one panel, for the one model with parts
