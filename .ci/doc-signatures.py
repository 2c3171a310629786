#!/usr/bin/env python3
"""Checks the adapters' rendered docs: no public signature names an internal crate.

Every type in a signature of rpc-tokio's and rpc-async-std's API must be reachable from the
adapter itself (issue 13): a link from a declaration, a method header, a field or a variant
into `rpc_proto/` or `rpc_driver/` means a user would have to write `rpc_tokio::rpc_proto::X`.
Links in prose are not checked. Run after `cargo doc --workspace --no-deps`.
"""
import pathlib
import re
import sys

DOC = pathlib.Path(__file__).resolve().parent.parent / "target" / "doc"
ADAPTERS = ["rpc_tokio", "rpc_async_std"]
# The signature parts of a rustdoc page.
SIGNATURE = re.compile(
    r'<pre class="rust item-decl">.*?</pre>'
    r'|<h[34] class="code-header">.*?</h[34]>'
    r'|<span id="(?:structfield|variant)\.[^"]*" class="[^"]*">.*?</span>'
    r'|<section id="variant\.[^"]*" class="variant">.*?</section>',
    re.S,
)
INTERNAL = re.compile(r'href="(?:\.\./)*(rpc_proto|rpc_driver)/([^"#]*)')


def main() -> int:
    found = {}
    pages = 0
    for adapter in ADAPTERS:
        root = DOC / adapter
        if not root.is_dir():
            print(f"doc-signatures: {root} missing; run cargo doc first", file=sys.stderr)
            return 2
        for page in root.rglob("*.html"):
            pages += 1
            html = page.read_text(encoding="utf-8")
            for part in SIGNATURE.findall(html):
                for crate, target in INTERNAL.findall(part):
                    key = f"{crate}/{target}"
                    found.setdefault(key, set()).add(str(page.relative_to(DOC)))
    if pages < 50:
        print(f"doc-signatures: only {pages} pages read", file=sys.stderr)
        return 2
    if found:
        print("public signatures name internal crates (export these from rpc_driver::api):")
        for key, where in sorted(found.items()):
            print(f"  {key}  (in {', '.join(sorted(where)[:3])}{', ...' if len(where) > 3 else ''})")
        return 1
    print(f"doc-signatures: {pages} pages, no signature names an internal crate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
