#!/usr/bin/env bash
# Make a private CA and a SuperLink (server) certificate signed by it, with openssl.
#
# Usage: scripts/make_certs.sh OUT_DIR [HOST ...]
#   OUT_DIR  folder receiving ca.crt ca.key server.crt server.key server.csr (created if missing)
#   HOST     names/addresses the clients use to reach the server; each becomes a subjectAltName
#            (an IPv4/IPv6 address -> IP:..., anything else -> DNS:...).
#            Default: 127.0.0.1 localhost ::1
#
# The server uses ca.crt + server.crt + server.key (simskip-server --ssl-ca-certfile/--ssl-certfile/
# --ssl-keyfile); each party gets only ca.crt (simskip-client --root-certificates). Keep ca.key
# offline: whoever holds it can impersonate the server.
# Environment: DAYS (validity, default 365), KEY_BITS (RSA size, default 4096).
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
command -v openssl >/dev/null || { echo "make_certs.sh: openssl not found on PATH" >&2; exit 1; }

out="$1"; shift
hosts=("$@")
[[ ${#hosts[@]} -eq 0 ]] && hosts=(127.0.0.1 localhost ::1)
days="${DAYS:-365}"
bits="${KEY_BITS:-4096}"
mkdir -p "$out"

san=""
for h in "${hosts[@]}"; do
    if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then entry="IP:$h"; else entry="DNS:$h"; fi
    san="${san:+$san,}$entry"
done

# 1. the CA: a self-signed certificate that may sign others
openssl genrsa -out "$out/ca.key" "$bits" 2>/dev/null
openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" -subj "/CN=simskip federation CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.crt"

# 2. the server key and a signing request naming the hosts clients connect to
openssl genrsa -out "$out/server.key" "$bits" 2>/dev/null
openssl req -new -key "$out/server.key" -subj "/CN=${hosts[0]}" -out "$out/server.csr"

# 3. the CA signs it; the SAN list is what TLS clients check the address against
extfile="$(mktemp)"
trap 'rm -f "$extfile"' EXIT
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
    "$san" > "$extfile"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -sha256 -extfile "$extfile" -out "$out/server.crt" 2>/dev/null
chmod 600 "$out/ca.key" "$out/server.key"
openssl verify -CAfile "$out/ca.crt" "$out/server.crt" >/dev/null
echo "make_certs.sh: $out/{ca.crt,server.crt,server.key} for $san"
