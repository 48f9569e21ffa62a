"""Training photos for the Kodak check (#16 item 4): fetch, verify, crop. Never Kodak.

Gets the CC0 / public-domain RGB photos that can be had here without a network beyond the
package clients: the scikit-image wheel's `skimage/data/` (`pip download scikit-image==0.26.0
--no-deps`) and Debian's `libjxl-testdata` (`apt-get download libjxl-testdata`; CC0 only:
`external/wesaturate/` and `external/raw.pixls/`, per its debian/copyright). Every photo used is
listed with its licence and checked against its sha256 in `benchmarks/results/kodak/
training_photos.json`; the photos themselves are not committed. Writes seeded random 64x64 RGB
crops (random flips and 90-degree turns; photos drawn in proportion to their area) as one
(N, 64, 64, 3) uint8 .npy for `vaecompress train -d`.

    python benchmarks/kodak_train_data.py --work /tmp/kodak-train --crops 12000 -o /tmp/kodak-train/crops.npy
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

LIST = Path(__file__).parent / "results" / "kodak" / "training_photos.json"
SKIMAGE = "scikit-image==0.26.0"
JXL = "libjxl-testdata"            # 0.0~git20230110.d6168ff-1 (Debian)

# (source, path inside the package, licence as the package states it)
PHOTOS = [
    ("skimage", "skimage/data/astronaut.png", "public domain (NASA; skimage _fetchers.py)"),
    ("skimage", "skimage/data/chelsea.png", "CC0 (Stefan van der Walt; skimage _fetchers.py)"),
    ("skimage", "skimage/data/coffee.png", "CC0 (Rachel Michetti; skimage _fetchers.py)"),
    *[("libjxl-testdata", f"usr/share/libjxl-testdata/external/wesaturate/500px/{n}_srgb8.png",
       "CC0 (wesaturate.com; debian/copyright)")
      for n in ("cvo9xd_keong_macan", "tmshre_riaphotographs", "u76c0g_bliznaca")],
    *[("libjxl-testdata", f"usr/share/libjxl-testdata/external/wesaturate/64px/{n}_srgb8.png",
       "CC0 (wesaturate.com; debian/copyright)")
      for n in ("Nikon-D3-14bit", "a2d1un_nkitzmiller", "l1qnb5_nkitzmiller", "phu1or_alfann24",
                "q3a0b3_d17ws", "ra0ed45_alfann24", "t0gho7_orlaustral", "vgqcws_vin")],
    *[("libjxl-testdata", f"usr/share/libjxl-testdata/external/raw.pixls/{n}.png",
       "CC0 (raw.pixls.us; debian/copyright)")
      for n in ("DJI-FC6310-16bit_srgb8_v4_krita", "Google-Pixel2XL-16bit_srgb8_v4_krita",
                "HUAWEI-EVA-L09-16bit_srgb8_dt", "Nikon-D300-12bit_srgb8_dt",
                "Sony-DSC-RX1RM2-14bit_srgb8_v4_krita")],
]
# Left out: skimage's gray photos (camera, brick, grass, gravel, moon, coins, clock: an RGB model
# would learn R = G = B), its JPEGs (rocket, retina, hubble: JPEG artefacts), motorcycle_left/right
# (no licence stated), microscopy/synthetic images; libjxl's flower (BSD-3, not CC0), the
# 64px/500px files that are the same photos as the 500px ones at another size, gray/alpha/wide-gamut variants.


def fetch(work: Path) -> dict[str, Path]:
    """Unpack both packages under `work` (downloading them with pip / apt-get if absent)."""
    work.mkdir(parents=True, exist_ok=True)
    roots = {"skimage": work / "skimage", "libjxl-testdata": work / "libjxl-testdata"}
    if not roots["skimage"].exists():
        wheels = glob.glob(str(work / "scikit_image-0.26.0-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", SKIMAGE, "--no-deps", "-q", "-d", str(work)],
                           check=True)
            wheels = glob.glob(str(work / "scikit_image-0.26.0-*.whl"))
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(roots["skimage"], [n for n in z.namelist() if n.startswith("skimage/data/")])
    if not roots["libjxl-testdata"].exists():
        debs = glob.glob(str(work / "libjxl-testdata_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", JXL], check=True, cwd=work)
            debs = glob.glob(str(work / "libjxl-testdata_*.deb"))
        subprocess.run(["dpkg", "-x", debs[0], str(roots["libjxl-testdata"])], check=True)
    return roots


def load_photos(roots: dict[str, Path], write_list: bool) -> list[np.ndarray]:
    """The photos as (H, W, 3) uint8, each checked against the committed sha256 (or listed)."""
    known = {p["path"]: p for p in json.loads(LIST.read_text())["photos"]} if LIST.exists() else {}
    out, listed = [], []
    for source, rel, licence in PHOTOS:
        raw = (roots[source] / rel).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if not write_list and known.get(rel, {}).get("sha256") != digest:
            raise SystemExit(f"{rel}: sha256 {digest} is not the listed one ({LIST})")
        img = np.asarray(Image.open(roots[source] / rel).convert("RGB"), dtype=np.uint8)
        out.append(img)
        listed.append({"source": source, "path": rel, "licence": licence, "sha256": digest,
                       "height": img.shape[0], "width": img.shape[1]})
    if write_list:
        LIST.parent.mkdir(parents=True, exist_ok=True)
        LIST.write_text(json.dumps({"packages": {"skimage": SKIMAGE, "libjxl-testdata": JXL},
                                    "photos": listed}, indent=1) + "\n")
    return out


def crops(photos: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """n seeded random size x size crops, photo chosen in proportion to its area, random flip and turn."""
    rng = np.random.default_rng(seed)
    area = np.array([p.shape[0] * p.shape[1] for p in photos], float)
    which = rng.choice(len(photos), size=n, p=area / area.sum())
    out = np.empty((n, size, size, 3), np.uint8)
    for i, k in enumerate(which):
        p = photos[k]
        y, x = rng.integers(0, p.shape[0] - size + 1), rng.integers(0, p.shape[1] - size + 1)
        c = p[y:y + size, x:x + size]
        if rng.integers(2):
            c = c[:, ::-1]
        out[i] = np.rot90(c, rng.integers(4))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/kodak-train"))
    ap.add_argument("--crops", type=int, default=12000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-list", action="store_true", help="(re)write training_photos.json instead of checking it")
    ap.add_argument("-o", "--out", type=Path, default=None)
    a = ap.parse_args()
    photos = load_photos(fetch(a.work), a.write_list)
    x = crops(photos, a.crops, a.size, a.seed)
    out = a.out or a.work / "crops.npy"
    np.save(out, x)
    print(f"{len(photos)} photos, {sum(p.shape[0] * p.shape[1] for p in photos):,} pixels -> {out} {x.shape} "
          f"sha256 {hashlib.sha256(x.tobytes()).hexdigest()}")


if __name__ == "__main__":
    main()
