#!/usr/bin/env bash
# Print the URI of the Debian archive this machine's apt is configured with (deb822 *.sources
# and the classic sources.list, where apt itself reads them), so local mirrors and proxies work
# and no host is named in this repository. ABE_DEBIAN_MIRROR overrides it.
# A Debian archive entry is one whose suites include a Debian release by name (bullseye ...
# forky, sid, or stable/testing/unstable); security and -updates suites are not the archive.
# Usage: scripts/debian_mirror.sh   (exit 1 with one line on stderr when none is configured)
set -euo pipefail
if [ -n "${ABE_DEBIAN_MIRROR:-}" ]; then echo "$ABE_DEBIAN_MIRROR"; exit 0; fi

list=/etc/apt/sources.list parts=/etc/apt/sources.list.d
if command -v apt-config >/dev/null; then
  eval "$(apt-config shell list Dir::Etc::sourcelist/f parts Dir::Etc::sourceparts/d)"
fi
files=()
[ -f "$list" ] && files+=("$list")
for f in "${parts%/}"/*.list "${parts%/}"/*.sources; do [ -f "$f" ] && files+=("$f"); done

releases='^(buster|bullseye|bookworm|trixie|forky|duke|sid|oldoldstable|oldstable|stable|testing|unstable)$'
mirror=""
if [ "${#files[@]}" -gt 0 ]; then
  mirror=$(awk -v releases="$releases" '
    function emit(uris, suites,   u, s, nu, ns, i, j) {
      nu = split(uris, u, " "); ns = split(suites, s, " ")
      for (i = 1; i <= ns; i++) if (s[i] ~ releases) for (j = 1; j <= nu; j++) { print u[j]; found = 1 }
    }
    function flush() {
      if (types ~ /(^| )deb( |$)/ && enabled !~ /^[Nn]o$/) emit(uris, suites)
      types = uris = suites = enabled = ""
    }
    FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
    /^[ \t]*#/ { next }
    deb822 && /^[ \t]*$/ { flush(); next }
    deb822 && /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0; next }
    deb822 && /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0; next }
    deb822 && /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0; next }
    deb822 && /^Enabled:/ { sub(/^Enabled:[ \t]*/, ""); enabled = $0; next }
    !deb822 && $1 == "deb" {
      i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }   # skip [ options ]
      if ($(i + 1) ~ releases) print $i
    }
    END { flush() }' "${files[@]}" | head -n1)
fi
if [ -z "$mirror" ]; then
  echo "no Debian archive in the apt configuration ($list, ${parts%/}/*.sources): add one (Types: deb," \
       "URIs: your Debian mirror, Suites: a release name such as bookworm) or set ABE_DEBIAN_MIRROR=URI" >&2
  exit 1
fi
echo "${mirror%/}"
