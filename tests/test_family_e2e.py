"""The weights-free family members through a real worker and a real store, with a tiny random CLIP.

Labelled honestly: the exhibits in exhibits/family/ use ``clip_models = ["tiny"]``,
so the pictures are noise; what is tested is the pipeline (worker, live frames,
checkpoints, timelapse, SVG, PNG metadata), not the art.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exhibits.files import read_png_meta
from exhibits.show import ShowConfig
from exhibits.store import Store

ROOT = Path(__file__).resolve().parents[1]
FAMILY_DIR = ROOT / "exhibits" / "family"
EXHIBITS = ("pixels-tiny", "fourier-tiny", "siren-tiny", "clipdraw-tiny", "stylegan-clip-tiny")
STYLEGAN_CLIP_TOML = """title = "StyleGAN+CLIP (tiny random models)"
series = "The CLIP-steered family: pipeline test"
[canvas]
width = 64
height = 64
[generator]
name = "stylegan_clip"
checkpoint = "{checkpoint}"
space = "w"
clip_models = ["tiny"]
steps = 12
cutouts = 8
checkpoint_every = 4
progress_every = 1
timelapse = 2
timelapse_format = "both"
"""
PROMPTS = [["a lighthouse in a storm", 1.0], ["blurry", -0.3]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from renderer.worker import Worker

    from tests.stylegan_helpers import tiny_sg2
    from tests.stylegan_mapping_helpers import mapping_tensors, write_nvlabs_with_mapping

    root = tmp_path_factory.mktemp("family")
    data = root / "data"
    (root / "exhibits").mkdir()
    ckpt = write_nvlabs_with_mapping(tiny_sg2(res=32), mapping_tensors(), root / "tiny_sg2.pkl")
    (root / "exhibits" / "stylegan_clip_tiny.toml").write_text(STYLEGAN_CLIP_TOML.format(checkpoint=ckpt.as_posix()))
    cfg = ShowConfig(data_dir=data, exhibits=EXHIBITS, exhibit_dirs=(FAMILY_DIR, root / "exhibits"), device="cpu")
    worker = Worker(cfg, Store(data), lease=10.0, poll=0.02, top_up=False)
    worker.setup()
    assert sorted(worker.runnable()) == sorted(EXHIBITS)
    jobs = {name: worker.store.submit(name, prompts=PROMPTS, prompt_text="a lighthouse in a storm | blurry:-0.3",
                                      seed=5, source="playlist") for name in EXHIBITS}
    worker.run(max_jobs=len(EXHIBITS))
    return worker, jobs


@pytest.mark.parametrize("exhibit", EXHIBITS)
def test_each_generator_makes_a_piece_through_the_worker(finished, exhibit):
    worker, jobs = finished
    store = worker.store
    job = store.get_job(jobs[exhibit].id)
    assert job.status == "done", job.error
    piece = store.get_piece(job.piece_id)
    meta = read_png_meta(store.path(piece.image_path))
    generator = exhibit.removesuffix("-tiny").replace("-", "_")
    assert meta["generator"] == generator and meta["steps_done"] == 12
    assert "tiny random-initialised CLIP" in meta["label"] and piece.label == meta["label"]
    assert [m["name"] for m in meta["models"]["clip"]] == ["tiny"]
    if generator == "stylegan_clip":
        assert meta["models"]["stylegan"]["format"] == "nvlabs" and meta["space"] == "w"
    assert meta["prompts"] == PROMPTS and (piece.width, piece.height) == (64, 64)
    with Image.open(store.path(piece.image_path)) as im:
        assert im.size == (64, 64) and np.asarray(im.convert("RGB")).std() > 2  # a picture, not a flat grey
    assert store.path(piece.extra["timelapse"]).suffix == ".mp4"
    with Image.open(store.path(piece.extra["timelapse_gif"])) as gif:
        assert gif.n_frames == 6
    if generator == "clipdraw":
        svg = ET.parse(store.path(piece.extra["drawing"])).getroot()
        assert len(svg.findall("{http://www.w3.org/2000/svg}path")) == 32
    assert store.verify_piece(piece)


def test_moving_versions_and_drawings_download_from_the_piece_page(finished):
    from kiosk.web import create_app

    worker, jobs = finished
    store = worker.store
    app = create_app(ShowConfig(data_dir=store.root, exhibits=("demo",)), store, testing=True)
    client = app.test_client()
    piece = store.get_piece(store.get_job(jobs["clipdraw-tiny"].id).piece_id)
    html = client.get(f"/p/{piece.id}").get_data(as_text=True)
    for key, ext, mime in (("timelapse", "mp4", "video/mp4"), ("timelapse_gif", "gif", "image/gif"),
                           ("drawing", "svg", "image/svg+xml")):
        url = f"/p/{piece.id}/{key}.{ext}"
        assert url in html, url
        r = client.get(url)
        assert r.status_code == 200 and r.mimetype == mime
        assert r.data == store.path(piece.extra[key]).read_bytes()
        assert "attachment" in r.headers["Content-Disposition"]
    assert client.get(f"/p/{piece.id}/drawing.mp4").status_code == 404  # the suffix must match the file
    assert client.get(f"/p/{piece.id}/secrets.svg").status_code == 404  # only the known kinds of file
