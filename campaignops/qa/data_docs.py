"""Data Docs that work offline: GX's pages load their CSS and JavaScript from public CDNs;
campaignops rewrites them to copies shipped in campaignops/qa/data_docs_assets/.

Each asset is the exact release GX's templates ask for (bootstrap 4.3.1, jQuery 3.7.1,
popper 1.12.9, Font Awesome 6.6.0, bootstrap-table 1.19.1, bootstrap-datepicker 1.9.0,
bootstrap-dark 1.1.0) or, where GX asks for a major version only (vega@5, vega-lite@5,
vega-embed@6), the release pinned here; their licences are listed in the assets folder's
LICENSES.md. Pages open on a locked-down ops network, or from the file system, styled.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "data_docs_assets"
VENDOR = Path("static") / "vendor"  # inside each Data Docs site

# CDN address (as GX's templates write it) -> the shipped copy, relative to ASSETS
LOCAL: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "css/bootstrap-4.3.1.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "js/bootstrap-4.3.1.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "js/jquery-3.7.1.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "js/popper-1.12.9.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "css/fontawesome-6.6.0.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "css/bootstrap-table-1.19.1.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "js/bootstrap-table-1.19.1.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "js/bootstrap-table-filter-control-1.19.1.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "css/bootstrap-table-filter-control-1.19.1.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "css/bootstrap-table-filter-control-1.19.1.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "css/bootstrap-datepicker-1.9.0.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "js/bootstrap-datepicker-1.9.0.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "css/bootstrap-prefers-dark-1.1.0.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "js/vega-5.33.1.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "js/vega-lite-5.23.0.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "js/vega-embed-6.29.0.min.js",
}
# GX's logo is fetched from its web assets bucket; the package ships the same image.
_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/"
                   r"logo-long\.png(\?[^\"']*)?")
# What a page would load from elsewhere: scripts, stylesheets, images (links a reader
# may follow are left alone).
_EXTERNAL = re.compile(r"<(?:script|img)[^>]*\ssrc=\"(https?://[^\"]+)\"|"
                       r"<link[^>]*\shref=\"(https?://[^\"]+)\"")


def localise(site: Path) -> list[str]:
    """Rewrite every page of a Data Docs site to the shipped assets; what still loads from outside."""
    vendor = site / VENDOR
    if vendor.exists():
        shutil.rmtree(vendor)
    shutil.copytree(ASSETS, vendor, ignore=shutil.ignore_patterns("*.md"))
    remaining: set[str] = set()
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        to_root = Path(os.path.relpath(site, page.parent))
        for url, local in LOCAL.items():
            text = text.replace(f'"{url}"', f'"{(to_root / VENDOR / local).as_posix()}"')
        text = _LOGO.sub((to_root / "static" / "images" / "logo-long.png").as_posix(), text)
        page.write_text(text, encoding="utf-8")
        remaining.update(a or b for a, b in _EXTERNAL.findall(text))
    return sorted(remaining)
