#!/usr/bin/env bash
# Makes DIR/ca.pem, and DIR/cert.pem with DIR/key.pem signed by it for 127.0.0.1 and
# localhost (EC P-256), for TLS benchmarks. Needs openssl.
set -euo pipefail
dir=${1:?usage: benches/tls-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=Broadcast bench CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=127.0.0.1" -keyout key.pem -out cert.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > ext.cnf
openssl x509 -req -in cert.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
  -extfile ext.cnf -out cert.pem 2>/dev/null
rm -f cert.csr ext.cnf ca.srl
echo "$dir: ca.pem, cert.pem, key.pem"
