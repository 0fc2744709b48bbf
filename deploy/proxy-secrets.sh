#!/bin/sh
# The storage proxy's secrets: a CA, the proxy's certificate and key signed by it, and a token.
#   deploy/proxy-secrets.sh OUT_DIR [HOST ...]      (make proxy-secrets; OUT_DIR is never committed)
# HOSTs are the names clients dial (default: the Kubernetes Service storage-proxy, its namespaced
# names, localhost and 127.0.0.1). Writes OUT_DIR/ca.crt, tls.crt, tls.key and token; keeps none of
# the CA's key, so no one can sign another certificate the clients would trust (run it again to rotate).
set -eu
out=${1:?usage: deploy/proxy-secrets.sh OUT_DIR [HOST ...]}
shift
[ "$#" -gt 0 ] || set -- storage-proxy storage-proxy.cnn-search storage-proxy.cnn-search.svc localhost 127.0.0.1
san=""
for h in "$@"; do
  case "$h" in
    *[!0-9.]*) san="$san,DNS:$h" ;;
    *) san="$san,IP:$h" ;;
  esac
done
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 -subj "/CN=cnn-search proxy CA" \
  -keyout "$work/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
  -keyout "$out/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "${san#,}" > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$out/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -CAserial "$work/ca.srl" -days 825 \
  -extfile "$work/ext" -out "$out/tls.crt" 2>/dev/null
openssl rand -hex 32 > "$out/token"
chmod 644 "$out/ca.crt" "$out/tls.crt"
echo "wrote $out/ca.crt, $out/tls.crt, $out/tls.key, $out/token (certificate for: $*)"
