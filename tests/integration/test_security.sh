#!/usr/bin/env bash
# TLS and API keys, end to end (issue 21): makes a test PKI with openssl (a CA, a server
# certificate for 127.0.0.1/localhost, an expired one, a client certificate, and a rogue
# CA's client certificate) and an api_keys_file (one key in the clear, one hashed at
# rest), then starts the service three times through test_service's python mode and
# runs client_security.py against it: main (TLS + keys), expired, mtls.
# Args: BUILD_DIR SOURCE_DIR.
set -uo pipefail
build=$1 src=$2
pki=$(mktemp -d /tmp/mm-pki-XXXXXX)
trap 'rm -rf "$pki"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cd "$pki" || exit 1
newkey() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj /CN=mm-test-ca 2>/dev/null || fail "openssl: CA"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout rogue-ca.key -out rogue-ca.pem \
  -days 2 -subj /CN=mm-rogue-ca 2>/dev/null || fail "openssl: rogue CA"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext
newkey server localhost && newkey client mm-test-client && newkey rogue mm-rogue-client || fail "openssl: keys"
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem 2>/dev/null &&
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.pem 2>/dev/null &&
openssl x509 -req -in rogue.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial -days 2 -out rogue.pem 2>/dev/null ||
  fail "openssl: certificates"
# expired: valid for one day in 2020 (openssl ca takes explicit dates)
printf '[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\npolicy=p\ncopy_extensions=copy\n[p]\ncommonName=supplied\n' > ca.cnf
: > index.txt && echo 1000 > serial
openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in server.csr -extfile san.ext -notext \
  -startdate 20200101000000Z -enddate 20200102000000Z -out expired.pem 2>/dev/null || fail "openssl: expired certificate"
# keys: key1 in the clear, key2 only as its hash (mmctl apikey makes both)
"$build/tools/mmctl" apikey second > second.out 2>/dev/null || fail "mmctl apikey"
echo "first-key-0123456789abcdef" > key1
sed -n 1p second.out > key2 && sed -n 2p second.out | cut -d' ' -f2 > key2.hash
printf '# test keys\nfirst %s\n%s\n' "$(cat key1)" "$(sed -n 2p second.out)" > keys.txt
export MM_SEC_DIR=$pki
run() { # MODE EXTRA_JSON [env for the harness's own client...]
  local mode=$1 extra=$2
  shift 2
  echo "== $mode"
  env MM_SEC_MODE="$mode" MM_SERVICE_EXTRA="$extra" "$@" \
    "$build/tests/integration/test_service" python "$build/coordinator/mm-coordinator" "$build/worker/mm-stage" \
    "$src/tests/integration/client_security.py" || fail "$mode"
}
tls="\"tls_cert\": \"$pki/server.pem\", \"tls_key\": \"$pki/server.key\""
run main "$tls, \"api_keys_file\": \"$pki/keys.txt\", \"auth_open\": \"health\", \"key_max_requests\": 2" MM_TLS_CA="$pki/ca.pem" MM_API_KEY="$(cat key1)"
run expired "\"tls_cert\": \"$pki/expired.pem\", \"tls_key\": \"$pki/server.key\"" MM_SVC_READY_BY_LOG=1
run mtls "$tls, \"tls_client_ca\": \"$pki/ca.pem\"" MM_TLS_CA="$pki/ca.pem" MM_TLS_CERT="$pki/client.pem" \
  MM_TLS_KEY="$pki/client.key"
echo "test_security: passed"
