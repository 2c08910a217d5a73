"""xsae.tables: CSV / Markdown / LaTeX rendering and the reconstruction table."""

from __future__ import annotations

import pandas as pd
import pytest

from xsae import tables


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "run_name": ["topk_a", "b"],
        "share %": [12.34567, 0.98765],
        "NMSE": [0.12345, 0.45678],
        "count": [3, 40],
    })


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_render_all_formats(tmp_path):
    out = {"csv": tmp_path / "t.csv", "md": tmp_path / "t.md", "tex": tmp_path / "sub" / "t.tex"}
    tables.render(frame(), out, caption="Reconstruction quality", label="tab:rec")
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub") == []

    pd.testing.assert_frame_equal(pd.read_csv(out["csv"]), frame())

    md = out["md"].read_text(encoding="utf-8")
    lines = md.splitlines()
    assert lines[0] == "Reconstruction quality"
    header = next(line for line in lines if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["run_name", "share %", "NMSE", "count"]
    body = [line for line in lines if line.startswith("|")][2:]
    assert len(body) == 2
    first = [c.strip() for c in body[0].strip("|").split("|")]
    assert first == ["topk_a", "12.346", "0.123", "3"]
    second = [c.strip() for c in body[1].strip("|").split("|")]
    assert second == ["b", "0.988", "0.457", "40"]
    assert "0.12345" not in md

    tex = out["tex"].read_text(encoding="utf-8")
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\caption{Reconstruction quality}" in tex
    assert r"\label{tab:rec}" in tex
    assert r"run\_name" in tex and r"share \%" in tex  # headers escaped
    assert r"topk\_a" in tex  # values escaped
    assert "0.123" in tex and "12.346" in tex and "0.12345" not in tex
    assert " run_name" not in tex and "topk_a " not in tex


def test_render_subset_of_formats(tmp_path):
    tables.render(frame(), {"md": tmp_path / "only.md"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only.md"]


def test_markdown_keeps_trailing_zeros(tmp_path):
    md = tables.to_markdown(pd.DataFrame({"x": [1.0, 0.5]}), digits=3)
    assert "1.000" in md and "0.500" in md


def test_markdown_digits():
    md = tables.to_markdown(pd.DataFrame({"x": [0.123456789]}), digits=5)
    assert "0.12346" in md and "0.123457" not in md


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="html"):
        tables.render(frame(), {"html": tmp_path / "t.html"})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    existing = tmp_path / "keep.md"
    existing.write_text("old\n", encoding="utf-8")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tables, "to_markdown", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        tables.render(frame(), {"md": tmp_path / "new.md"})
    with pytest.raises(RuntimeError):
        tables.render(frame(), {"md": existing})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.md"]
    assert existing.read_text(encoding="utf-8") == "old\n"


def test_failed_csv_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(self, *args, **kwargs):
        raise OSError("no space")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError):
        tables.render(frame(), {"csv": tmp_path / "t.csv"})
    assert list(tmp_path.iterdir()) == []


def tidy(run: str, streams: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = []
    for stream, metrics in streams.items():
        for metric, value in metrics.items():
            rows.append({"run": run, "method": "topk", "dataset": "tux", "split": "test",
                         "stream": stream, "n_latents": 256, "k": 16, "metric": metric,
                         "value": float(value)})
    return pd.DataFrame(rows)


def test_reconstruction_table():
    a = tidy("run_a", {
        "img": {"nmse": 0.1, "r2": 0.9, "dead_latents": 3, "dead_fraction": 3 / 256, "n_samples": 100},
        "txt": {"nmse": 0.2, "r2": 0.8, "dead_latents": 0, "dead_fraction": 0.0, "n_samples": 100},
    })
    b = tidy("run_b", {
        "img": {"n_samples": 50, "nmse": 0.3, "r2": 0.7, "dead_latents": 128, "dead_fraction": 0.5},
    })
    table = tables.reconstruction_table([a, b])
    assert list(table.columns) == ["run", "method", "dataset", "split", "stream", "L", "k", "samples",
                                   "NMSE", "R²", "dead latents", "dead (%)"]
    assert len(table) == 3
    assert list(zip(table["run"], table["stream"], strict=True)) == [
        ("run_a", "img"), ("run_a", "txt"), ("run_b", "img")]
    row = table.set_index(["run", "stream"]).loc[("run_b", "img")]
    assert row["NMSE"] == 0.3 and row["R²"] == 0.7
    assert row["dead (%)"] == 50.0
    assert row["dead latents"] == 128 and row["samples"] == 50
    assert table["dead (%)"].tolist() == pytest.approx([100 * 3 / 256, 0.0, 50.0], abs=1e-12)
    assert pd.api.types.is_integer_dtype(table["dead latents"])
    assert pd.api.types.is_integer_dtype(table["samples"])
    assert table["L"].tolist() == [256, 256, 256]
    assert table.columns.name is None


def test_read_reference_whole_document_entry_or_none(tmp_path):
    path = tmp_path / "reference.yaml"
    path.write_text("table9:\n  A: {B: 0.5}\nappendix_r2:\n  clip: {x: 1}\n")
    assert tables.read_reference([]) is None
    whole = tables.read_reference([str(path)])
    assert whole == {"table9": {"A": {"B": 0.5}}, "appendix_r2": {"clip": {"x": 1}}}
    assert tables.read_reference([str(path)], "appendix_r2.clip") == {"x": 1}
    assert tables.read_reference([str(path)], "missing") == {}
