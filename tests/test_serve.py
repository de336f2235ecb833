"""`wbc serve`: the web app's API (FastAPI TestClient), upload limits, hostile uploads, results discovery."""
from __future__ import annotations

import io
import os
import re
import socket
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from wbc import LABELS
from wbc.data.synthetic import camera, scene as synth_scene, seeds
from wbc.apps.cli import build_parser, main
from wbc.apps.commands.serve import config_from_args
from wbc.core.errors import ConfigError, WbcError
from wbc.learn.models import build_model, save_checkpoint
from wbc.apps.predict import differential_count
from wbc.apps.serve_config import (DEFAULT_MAX_FILES, DEFAULT_MAX_UPLOAD_MB, ServeConfig, check_host, default_model, is_loopback,
                              upload_limits)
from wbc.dataset.pack import IMAGENET_MEAN, IMAGENET_STD
from wbc.apps.webapp import create_app
from wbc.apps.webapp.app import WEB_DIR
from wbc.apps.predict import predictions_csv
from wbc.apps.webapp.model import load_page_model
from wbc.apps.webapp.uploads import safe_name

SIZE = 32
ARCH = "shufflenet_v2_x1_0"
BASE_URL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny checkpoint (plumbing tests need no trained weights)."""
    torch.manual_seed(0)
    model = build_model(ARCH, len(LABELS), image_size=SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, model_name=ARCH, classes=list(LABELS),
                           image_size=SIZE, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), params={},
                           best_epoch=0, val_macro_f1=0.0)


def cell_jpeg(index: int, label: str) -> bytes:
    """A synthetic PBC-style white-cell crop (JPEG bytes)."""
    scene = synth_scene.Scene(seeds.DEFAULT_SEED, "synth_pbc", index, label, "", 0)
    field = synth_scene.render_field(scene, camera.PBC_CAMERA)
    image = camera.take_view(field, camera.PBC_CAMERA, camera.View(), np.random.default_rng(index))
    return camera.encode(image)


def cells_zip(broken: bool = True) -> bytes:
    """A zip of one synthetic cell per class (in a folder), a broken JPEG and a skipped text file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, label in enumerate(LABELS):
            zf.writestr(f"slide/{label}_{i}.jpg", cell_jpeg(i + 1, label))
        if broken:
            zf.writestr("slide/broken.jpg", b"\xff\xd8\xff\xe0 truncated")
        zf.writestr("slide/notes.txt", "not an image: skipped")
    return buf.getvalue()


def png_bytes(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_client(checkpoint: Path | None, tmp_path: Path, **config) -> TestClient:
    reports = config.pop("reports", tmp_path / "reports")
    app = create_app(ServeConfig(model=checkpoint, reports=reports, workspace=tmp_path, **config))
    return TestClient(app, base_url=BASE_URL)


@pytest.fixture()
def client(checkpoint: Path, tmp_path: Path):
    with make_client(checkpoint, tmp_path, max_upload_bytes=5 * 2**20, max_files=4) as c:
        yield c


def post_files(client: TestClient, files: dict[str, bytes]):
    return client.post("/api/classify", files=[("files", (name, data, "application/octet-stream"))
                                               for name, data in files.items()])


def predict_locally(uploads: dict[str, bytes], checkpoint: Path, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[pd.DataFrame, str]:
    """The same files under the same names in a folder: predict_files' frame and `wbc predict --out`'s CSV."""
    local = tmp_path / "local"
    local.mkdir()
    for name, data in uploads.items():
        (local / name).write_bytes(data)
    monkeypatch.chdir(local)
    frame = load_page_model(checkpoint).predict_files(list(uploads))  # = wbc.apps.predict.predict_files
    assert main(["predict", *uploads, "--model", str(checkpoint), "--out", "cli.csv", "--device", "cpu"]) in (0, 1)
    return frame, (local / "cli.csv").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------ classification


def test_classify_zip_with_broken_file_matches_wbc_predict(client: TestClient, checkpoint: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    uploads = {"batch.zip": cells_zip(), "cell.png": png_bytes(1), "bad.png": b"not a png"}
    response = post_files(client, uploads)
    assert response.status_code == 200, response.text
    result = response.json()

    frame, cli_csv = predict_locally(uploads, checkpoint, tmp_path, monkeypatch)
    csv_text = client.get(f"/api/jobs/{result['job']}/predictions.csv").text
    assert csv_text == predictions_csv(frame) == cli_csv
    assert [r["path"] for r in result["rows"]] == frame["path"].tolist() == [
        *(f"batch.zip:slide/{n}" for n in sorted(["broken.jpg", *(f"{c}_{i}.jpg" for i, c in enumerate(LABELS))])),
        "cell.png", "bad.png"]
    errors = {r["path"]: r["error"] for r in result["rows"] if r["error"]}
    assert list(errors) == ["batch.zip:slide/broken.jpg", "bad.png"]
    assert all(e.startswith("bad image") for e in errors.values())
    assert result["read"] == 6 and result["unreadable"] == 2 and result["notes"] == []
    good = [r for r in result["rows"] if not r["error"]]
    assert [r["label"] for r in good] == frame.loc[frame["error"] == "", "label"].tolist()
    np.testing.assert_allclose([r["probs"] for r in good],
                               frame.loc[frame["error"] == "", [f"p_{c}" for c in LABELS]].to_numpy(float))
    expected = differential_count(frame["label"].tolist(), LABELS).to_dict("records")
    assert [d["count"] for d in result["differential"]] == [e["count"] for e in expected]
    for got, want in zip(result["differential"], expected):
        assert got["ci_low"] == pytest.approx(want["ci_low"]) and got["ci_high"] == pytest.approx(want["ci_high"])


def test_thumbnails(client: TestClient) -> None:
    result = post_files(client, {"batch.zip": cells_zip(), "cell.png": png_bytes(2, (120, 80))}).json()
    for row in result["rows"]:
        response = client.get(f"/api/jobs/{result['job']}/thumbs/{row['index']}.jpg")
        if row["error"]:
            assert response.status_code == 404
            continue
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(response.content))
        assert max(thumb.size) <= 96
    assert client.get(f"/api/jobs/{result['job']}/thumbs/999.jpg").status_code == 404
    assert client.get("/api/jobs/nope/predictions.csv").status_code == 404


def test_archive_without_images_is_listed(client: TestClient) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "nothing to see")
    result = post_files(client, {"empty.zip": buf.getvalue(), "cell.png": png_bytes(3)}).json()
    assert [r["path"] for r in result["rows"]] == ["cell.png"]
    assert [n["path"] for n in result["notes"]] == ["empty.zip"] and "no image" in result["notes"][0]["error"]


def test_hostile_names_stay_inside_the_job_folder(client: TestClient, tmp_path: Path) -> None:
    result = post_files(client, {"../../escape.png": png_bytes(4), "..": png_bytes(5), "a\\b\x07c.png": png_bytes(6)}).json()
    # the client percent-escapes the control character (as browsers do); the server drops the folders
    assert [r["path"] for r in result["rows"]] == ["escape.png", "upload-2", "b%07c.png"]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path.parent / "escape.png").exists()
    assert safe_name("dir/a\x07\nb.jpg", 0) == "ab.jpg" and safe_name(" ", 3) == "upload-4"
    assert safe_name("x" * 300 + ".jpeg", 0).endswith(".jpeg") and len(safe_name("x" * 300 + ".jpeg", 0)) <= 200


def zip_bomb(member_bytes: int) -> bytes:
    """A small zip whose one member inflates to `member_bytes` zeros."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("bomb/zeros.png", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(member_bytes // len(chunk)):
                member.write(chunk)
        zf.writestr("bomb/cell.jpg", cell_jpeg(9, "monocyte"))
    return buf.getvalue()


def png_bomb() -> bytes:
    """A tiny PNG declaring 30000 x 30000 pixels (a decompression bomb for the pixel guard)."""
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_bomb_and_pixel_bomb_are_listed_and_the_server_lives(client: TestClient, checkpoint: Path,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uploads = {"bomb.zip": zip_bomb(160 * 2**20),  # over the default 100 MiB max_member_bytes
               "big.png": png_bomb(), "cell.png": png_bytes(7)}
    assert len(uploads["bomb.zip"]) < 2**20
    response = post_files(client, uploads)
    assert response.status_code == 200, response.text
    rows = {r["path"]: r for r in response.json()["rows"]}
    assert rows["cell.png"]["label"] in LABELS
    bomb = [r for p, r in rows.items() if p.startswith("bomb.zip")]
    assert bomb and all(r["error"] and not r["label"] for r in bomb)
    assert "bomb/zeros.png" in bomb[0]["error"] and "wbc-serve" not in bomb[0]["error"]  # no temporary path
    assert "decompression bomb" in rows["big.png"]["error"]
    assert client.get("/api/info").status_code == 200
    _, cli_csv = predict_locally(uploads, checkpoint, tmp_path, monkeypatch)
    assert client.get(f"/api/jobs/{response.json()['job']}/predictions.csv").text == cli_csv


# ------------------------------------------------------------------------------ limits


def test_too_large_upload_is_413(client: TestClient) -> None:
    big = os.urandom(6 * 2**20)
    response = post_files(client, {"big.png": big})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"] and "5.0 MB" in response.json()["detail"]
    assert client.get("/api/info").status_code == 200


def test_too_large_streamed_upload_without_length_is_413(client: TestClient) -> None:
    """No Content-Length (chunked body): refused while streaming, once the file bytes pass the cap."""
    boundary = "wbcboundary"
    sent = []

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(12):  # 12 MiB offered, the cap is 5 MiB
            sent.append(1)
            yield bytes(2**20)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/api/classify", content=body(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]
    assert client.get("/api/info").status_code == 200


def test_too_many_files_is_413(client: TestClient) -> None:
    response = post_files(client, {f"c{i}.png": png_bytes(i) for i in range(5)})  # limit 4
    assert response.status_code == 413 and "too many files" in response.json()["detail"]


def test_not_multipart_is_400(client: TestClient) -> None:
    assert client.post("/api/classify", content=b"x", headers={"content-type": "text/plain"}).status_code == 400
    response = client.post("/api/classify", data={"field": "value"})  # a form without files
    assert response.status_code == 400


def test_upload_limits_from_params(tmp_path: Path) -> None:
    assert upload_limits(tmp_path / "missing.yaml") == (DEFAULT_MAX_UPLOAD_MB, DEFAULT_MAX_FILES)
    params = tmp_path / "params.yaml"
    params.write_text("train: {epochs: 1}\n")
    assert upload_limits(params) == (DEFAULT_MAX_UPLOAD_MB, DEFAULT_MAX_FILES)
    params.write_text("serve:\n  max_upload_mb: 12\n  max_files: 3\n")
    assert upload_limits(params) == (12, 3)
    params.write_text("serve:\n  max_files: -1\n")
    with pytest.raises(ConfigError, match="max_files"):
        upload_limits(params)


def test_cli_flags_override_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("serve:\n  max_upload_mb: 12\n  max_files: 3\n")
    config = config_from_args(build_parser().parse_args(["serve", "--max-files", "7"]))
    assert (config.max_upload_bytes, config.max_files, config.host, config.port) == (12 * 2**20, 7, "127.0.0.1", 8000)
    assert config.model is None  # no models/ here: the page will say so
    with pytest.raises(WbcError, match="--max-upload-mb"):
        config_from_args(build_parser().parse_args(["serve", "--max-upload-mb", "0"]))


# ------------------------------------------------------------------------------ local only


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_host(host, allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.org"])
def test_non_loopback_bind_refused(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(WbcError, match="--allow-remote"):
        check_host(host, allow_remote=False)
    check_host(host, allow_remote=True)


def test_cli_refuses_remote_host_without_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "8765"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on '0.0.0.0'" in err and "--allow-remote" in err


def test_cli_port_in_use_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "missing.pt"]) == 2
    assert f"cannot listen on 127.0.0.1 port {port}" in capsys.readouterr().err


def test_foreign_host_header_and_cross_site_post_refused(client: TestClient) -> None:
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 403
    response = client.post("/api/classify", headers={"origin": "http://evil.example"},
                           files=[("files", ("a.png", png_bytes(1), "image/png"))])
    assert response.status_code == 403
    assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200


def test_pages_load_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "Classify" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "Results" in client.get("/results").text
    for path in sorted(WEB_DIR.iterdir()):
        assert client.get(f"/static/{path.name}").status_code == 200
        urls = re.findall(r"https?://[^\s\"'`)]+", path.read_text(encoding="utf-8"))
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, (path.name, urls)


def test_no_checkpoint_message(tmp_path: Path) -> None:
    with make_client(None, tmp_path) as client:
        info = client.get("/api/info").json()
        assert info["model"] is None and "No checkpoint" in info["model_error"] and "--model" in info["model_error"]
        response = post_files(client, {"a.png": png_bytes(1)})
        assert response.status_code == 503 and "No checkpoint" in response.json()["detail"]


def test_default_model(tmp_path: Path, checkpoint: Path) -> None:
    assert default_model(tmp_path) is None
    (tmp_path / "models").mkdir()
    for name in ("headline-10.ckpt", "headline-2.ckpt", "mobilenet_v2-1.ckpt"):
        (tmp_path / "models" / name).write_bytes(b"x")
    assert default_model(tmp_path) == tmp_path / "models" / "headline-2.ckpt"  # the lowest seed


def test_unreadable_explicit_checkpoint_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WbcError):
        create_app(ServeConfig(model=bad))


# ------------------------------------------------------------------------------ results page


def write_reports(root: Path) -> Path:
    """A small workspace: dvc.yaml stage order, results.md, figures, a dvclive run."""
    (root / "dvc.yaml").write_text("stages:\n  dedup: {cmd: x}\n  split: {cmd: x}\n  train: {cmd: x}\n"
                                   "  evaluate: {cmd: x}\n")
    reports = root / "reports"
    (reports / "evaluate" / "resnet18-42").mkdir(parents=True)
    (reports / "dedup").mkdir()
    (reports / "results.md").write_text("# Results\n\n### test (n = 3)\n\n| Model | Acc |\n|:---|---:|\n"
                                        "| **resnet18** * | 98.6 |\n\n<script>alert(1)</script>\n")
    (reports / "extra.md").write_text("Other *notes*.\n")
    for path in (reports / "evaluate" / "resnet18-42" / "confusion_test.png", reports / "dedup" / "groups.png",
                 reports / "results.png"):
        path.write_bytes(png_bytes(8))
    (reports / "dedup" / "summary.json").write_text("{}")
    run = reports / "train" / "resnet18-42" / "plots" / "metrics"
    for part, values in (("train", [0.5, 0.8, 0.9]), ("val", [0.4, 0.7, 0.85])):
        (run / part).mkdir(parents=True)
        (run / part / "acc.tsv").write_text("step\tacc\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))
    (run / "lr.tsv").write_text("step\tlr\n0\t0.01\n1\t0.01\n2\t0.001\n")
    return reports


def test_results_discovered(checkpoint: Path, tmp_path: Path) -> None:
    reports = write_reports(tmp_path)
    with make_client(checkpoint, tmp_path, reports=reports) as client:
        data = client.get("/api/results").json()
        assert data["found"]
        html = data["results_html"]
        assert "<table>" in html and "<strong>resnet18</strong>" in html and "98.6" in html
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert [m["path"] for m in data["markdown"]] == ["extra.md"]
        assert [g["group"] for g in data["figures"]] == ["", "dedup", "evaluate/resnet18-42"]  # top, dvc.yaml order
        assert data["figures"][2]["images"] == [{"name": "confusion_test.png",
                                                  "path": "evaluate/resnet18-42/confusion_test.png"}]
        [run] = data["curves"]
        assert run["run"] == "train/resnet18-42"
        charts = {c["metric"]: c["series"] for c in run["charts"]}
        assert [s["name"] for s in charts["acc"]] == ["train", "val"]
        assert charts["acc"][1]["values"] == [0.4, 0.7, 0.85] and charts["lr"][0]["steps"] == [0, 1, 2]
        figure = client.get("/reports/evaluate/resnet18-42/confusion_test.png")
        assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"
        for bad in ("dedup/summary.json", "../dvc.yaml", "%2e%2e/dvc.yaml", "missing.png"):
            assert client.get(f"/reports/{bad}").status_code == 404, bad


def test_results_without_reports(checkpoint: Path, tmp_path: Path) -> None:
    with make_client(checkpoint, tmp_path) as client:
        data = client.get("/api/results").json()
        assert data["found"] is False and data["figures"] == []


def test_csv_format_is_the_cli_one() -> None:
    frame = pd.DataFrame({"path": ["a.png", "b.png"], "label": ["basophil", ""], "confidence": [0.5, np.nan],
                          "p_basophil": [0.5, np.nan], "error": ["", "bad image: x"]})
    assert predictions_csv(frame) == ("path,label,confidence,p_basophil,error\n"
                                     "a.png,basophil,0.500000,0.500000,\nb.png,,,,bad image: x\n")
