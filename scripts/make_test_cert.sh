#!/usr/bin/env bash
# Make a throwaway CA and a server certificate it signs, ECDSA P-256, for
# localhost and 127.0.0.1, with openssl: DIR/ca.pem, DIR/server.pem (leaf
# then CA), DIR/server.key. For local runs, benchmarks and the TLS peer;
# the tests make their own with rcgen.
#
#   scripts/make_test_cert.sh /tmp/wsgate-cert
set -euo pipefail
dir="${1:?usage: make_test_cert.sh DIR}"
mkdir -p "$dir"
cd "$dir"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=wsgate test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out server.ec.key 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in server.ec.key -out server.key
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -sha256 \
    -extfile server.ext -out server.leaf.pem 2>/dev/null
cat server.leaf.pem ca.pem >server.pem
rm -f server.csr server.ext server.ec.key server.leaf.pem ca.srl
echo "$dir/ca.pem $dir/server.pem $dir/server.key"
