#!/bin/sh
# Bootstrap Consul's ACL system and create the tokens consul-sync and service
# registration need. Needs only curl and a POSIX shell (jq is used when
# present). Safe to run again: policies and tokens are found by name and
# re-used, never duplicated.
#
#   ./setup-acl.sh                                      # first run
#   CONSUL_HTTP_TOKEN=<management token> ./setup-acl.sh  # any later run
#
# It creates:
#   policy consul-sync-read   service_prefix "" read, node_prefix "" read
#   token  "consul-sync read-only"         -> consul-sync's CONSUL_TOKEN
#   policy consul-agent       node/agent write on this agent's node,
#                             service_prefix "" write (registrations)
#   token  "consul agent and registration" -> the agent's own token, the token
#          for services in consul.d/, Registrator's CONSUL_HTTP_TOKEN
# and prints the management token (first run only) and both tokens.
#
# Environment:
#   CONSUL_HTTP_ADDR   agent address (default http://127.0.0.1:8500; host:port means http,
#                      or https with CONSUL_HTTP_SSL=true)
#   CONSUL_HTTP_TOKEN  a management token; needed once ACLs are bootstrapped
#   CONSUL_CACERT      CA certificate for an https address
#   CONSUL_WAIT        seconds to wait for the agent and its leader (default 60)
#
# Exit status: 0 done; 2 ACLs already bootstrapped and no CONSUL_HTTP_TOKEN
# given; 1 anything else (the message says what).

set -eu

ADDR=${CONSUL_HTTP_ADDR:-http://127.0.0.1:8500}
case $ADDR in
*://*) ;;
*)
  if [ "${CONSUL_HTTP_SSL:-false}" = true ]; then ADDR="https://$ADDR"; else ADDR="http://$ADDR"; fi
  ;;
esac
ADDR=${ADDR%/}
WAIT=${CONSUL_WAIT:-60}
TOKEN=${CONSUL_HTTP_TOKEN:-}

READ_POLICY=consul-sync-read
AGENT_POLICY=consul-agent
READ_TOKEN="consul-sync read-only"
AGENT_TOKEN="consul agent and registration"
# Rules as JSON string contents (quotes and newlines escaped).
READ_RULES='service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }'

NL='
'
if command -v jq >/dev/null 2>&1; then HAVE_JQ=1; else HAVE_JQ=0; fi

say() { printf '%s\n' "$*" >&2; }
fail() {
  say "setup-acl: $*"
  exit 1
}

# api METHOD PATH [JSON]: sets STATUS (000 when nothing answered) and RESPONSE.
api() {
  _method=$1 _path=$2 _data=${3-}
  set -- --silent --show-error --max-time 30 --request "$_method" --write-out "\\n%{http_code}"
  if [ -n "$TOKEN" ]; then set -- "$@" --header "X-Consul-Token: $TOKEN"; fi
  if [ -n "${CONSUL_CACERT:-}" ]; then set -- "$@" --cacert "$CONSUL_CACERT"; fi
  if [ -n "$_data" ]; then set -- "$@" --header "Content-Type: application/json" --data "$_data"; fi
  if _out=$(curl "$@" "$ADDR$_path" 2>/dev/null); then
    STATUS=${_out##*"$NL"}
    RESPONSE=${_out%"$NL"*}
    RESPONSE=${RESPONSE%"$NL"} # a pretty-printed body ends with a newline
  else
    STATUS=000
    RESPONSE="no answer from $ADDR (curl exit $?)"
  fi
}

# json_str KEY < JSON: the first string value of KEY (outer objects first).
json_str() {
  if [ "$HAVE_JQ" = 1 ]; then
    jq -r --arg k "$1" 'first(.. | objects | select(has($k)) | .[$k] | strings) // empty'
  else
    # shellcheck disable=SC2020 # each of , { } [ ] becomes a newline
    tr ',{}\133\135' '\n\n\n\n\n' |
      sed -n "s/^[[:space:]]*\"$1\"[[:space:]]*:[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" |
      head -n 1
  fi
}

# token_with_description DESCRIPTION < token list JSON: its AccessorID, if any.
token_with_description() {
  if [ "$HAVE_JQ" = 1 ]; then
    jq -r --arg d "$1" 'map(select(.Description == $d)) | .[0].AccessorID // empty'
  else
    # One line per token (each list entry starts with its AccessorID), then
    # the line whose Description is exactly the one asked for.
    {
      tr -d '\n'
      echo
    } | sed 's/"AccessorID"/\
"AccessorID"/g' |
      grep "\"Description\"[[:space:]]*:[[:space:]]*\"$1\"" |
      tr ',' '\n' |
      sed -n 's/^[[:space:]]*"AccessorID"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' |
      head -n 1
  fi
}

# --- 1. an agent with a leader --------------------------------------------------

say "Consul at $ADDR (JSON parsed with $([ "$HAVE_JQ" = 1 ] && echo jq || echo sed))"
waited=0
while :; do
  api GET /v1/status/leader
  case $STATUS:$RESPONSE in
  200:\"?*\") break ;;
  esac
  if [ "$waited" -ge "$WAIT" ]; then
    if [ "$STATUS" = 000 ]; then
      fail "no Consul agent answers at $ADDR after ${WAIT}s; is it running (docker compose up -d)? Set CONSUL_HTTP_ADDR if it listens elsewhere."
    fi
    fail "Consul at $ADDR has no leader after ${WAIT}s (last answer: $STATUS $RESPONSE)"
  fi
  sleep 1
  waited=$((waited + 1))
done

# --- 2. bootstrap, or a management token to go on with ------------------------

MANAGEMENT=""
while :; do
  api PUT /v1/acl/bootstrap
  case $STATUS in
  200)
    MANAGEMENT=$(printf '%s' "$RESPONSE" | json_str SecretID)
    [ -n "$MANAGEMENT" ] || fail "bootstrap answered without a SecretID: $RESPONSE"
    TOKEN=$MANAGEMENT
    say "ACL system bootstrapped."
    break
    ;;
  401)
    fail "ACLs are not enabled on this agent ($RESPONSE): set acl.enabled = true (consul.d/server.json) and restart Consul."
    ;;
  403)
    case $RESPONSE in
    *"no longer allowed"*) ;;
    *) fail "bootstrap refused: $RESPONSE" ;;
    esac
    if [ -z "$TOKEN" ]; then
      say "ACLs are already bootstrapped on $ADDR ($RESPONSE)."
      say "To go on, run this again with the management (bootstrap) token:"
      say "  CONSUL_HTTP_TOKEN=<management token> $0"
      exit 2
    fi
    say "ACLs are already bootstrapped; going on with CONSUL_HTTP_TOKEN."
    break
    ;;
  5??)
    # No leader yet, or ACLs still initialising: try again until CONSUL_WAIT.
    if [ "$waited" -ge "$WAIT" ]; then fail "bootstrap failed: $STATUS $RESPONSE"; fi
    sleep 1
    waited=$((waited + 1))
    ;;
  *) fail "bootstrap failed: $STATUS $RESPONSE" ;;
  esac
done

api GET /v1/acl/token/self
case $STATUS:$RESPONSE in
200:*) ;;
404:* | 403:*"ACL not found"*) fail "CONSUL_HTTP_TOKEN is not a token this Consul knows; use the management token." ;;
403:*) fail "CONSUL_HTTP_TOKEN may not manage ACLs ($RESPONSE); use the management token." ;;
*) fail "cannot read the token in use: $STATUS $RESPONSE" ;;
esac

# --- 3. policies -----------------------------------------------------------------

# ensure_policy NAME DESCRIPTION RULES: create it, or bring an existing one's
# rules up to date; sets POLICY_ID.
ensure_policy() {
  _body="{\"Name\":\"$1\",\"Description\":\"$2\",\"Rules\":\"$3\"}"
  api GET "/v1/acl/policy/name/$1"
  case $STATUS:$RESPONSE in
  200:*)
    POLICY_ID=$(printf '%s' "$RESPONSE" | json_str ID)
    [ -n "$POLICY_ID" ] || fail "policy $1: no ID in $RESPONSE"
    api PUT "/v1/acl/policy/$POLICY_ID" "$_body"
    [ "$STATUS" = 200 ] || fail "updating policy $1: $STATUS $RESPONSE"
    say "Policy $1 exists ($POLICY_ID): re-used, rules brought up to date."
    ;;
  404:* | "403:ACL not found"*)
    # Not there: recent Consul answers 404, Consul 1.10 403 "ACL not found".
    api PUT /v1/acl/policy "$_body"
    [ "$STATUS" = 200 ] || fail "creating policy $1: $STATUS $RESPONSE"
    POLICY_ID=$(printf '%s' "$RESPONSE" | json_str ID)
    say "Policy $1 created ($POLICY_ID)."
    ;;
  403:*) fail "CONSUL_HTTP_TOKEN may not manage ACLs ($RESPONSE); use the management token." ;;
  *) fail "policy $1: $STATUS $RESPONSE" ;;
  esac
}

# The agent's node name, for node and agent rules limited to this node.
api GET /v1/agent/self
NODE=""
if [ "$STATUS" = 200 ]; then NODE=$(printf '%s' "$RESPONSE" | json_str NodeName); fi
case $NODE in
"" | *[!A-Za-z0-9_.-]*)
  say "Could not read this agent's node name; the agent policy covers every node."
  AGENT_RULES='node_prefix \"\" { policy = \"write\" }\nagent_prefix \"\" { policy = \"write\" }'
  ;;
*)
  AGENT_RULES="node \\\"$NODE\\\" { policy = \\\"write\\\" }\\nagent \\\"$NODE\\\" { policy = \\\"write\\\" }"
  ;;
esac
AGENT_RULES="$AGENT_RULES"'\nservice_prefix \"\" { policy = \"write\" }'

ensure_policy "$READ_POLICY" "consul-sync: read services and nodes" "$READ_RULES"
ensure_policy "$AGENT_POLICY" "Consul agent on ${NODE:-any node}: node info, reload, service registration" "$AGENT_RULES"

# --- 4. tokens -------------------------------------------------------------------

# ensure_token DESCRIPTION POLICY: sets SECRET and TOKEN_STATE (created/existing).
ensure_token() {
  api GET /v1/acl/tokens
  [ "$STATUS" = 200 ] || fail "listing tokens: $STATUS $RESPONSE"
  _accessor=$(printf '%s' "$RESPONSE" | token_with_description "$1")
  if [ -n "$_accessor" ]; then
    api GET "/v1/acl/token/$_accessor"
    [ "$STATUS" = 200 ] || fail "reading token '$1': $STATUS $RESPONSE"
    TOKEN_STATE=existing
    say "Token '$1' exists ($_accessor): re-used."
  else
    api PUT /v1/acl/token "{\"Description\":\"$1\",\"Policies\":[{\"Name\":\"$2\"}]}"
    [ "$STATUS" = 200 ] || fail "creating token '$1': $STATUS $RESPONSE"
    TOKEN_STATE=created
    say "Token '$1' created ($(printf '%s' "$RESPONSE" | json_str AccessorID))."
  fi
  SECRET=$(printf '%s' "$RESPONSE" | json_str SecretID)
  [ -n "$SECRET" ] || fail "token '$1': no SecretID in the answer"
}

ensure_token "$READ_TOKEN" "$READ_POLICY"
READ_SECRET=$SECRET READ_STATE=$TOKEN_STATE
ensure_token "$AGENT_TOKEN" "$AGENT_POLICY"
AGENT_SECRET=$SECRET AGENT_STATE=$TOKEN_STATE

# --- 5. the agent's own tokens (kept across restarts: enable_token_persistence) ---

AGENT_SET=""
for kind in agent config_file_service_registration; do
  api PUT "/v1/agent/token/$kind" "{\"Token\":\"$AGENT_SECRET\"}"
  if [ "$STATUS" = 200 ]; then
    AGENT_SET="$AGENT_SET $kind"
  else
    say "Warning: could not set the agent's '$kind' token ($STATUS $RESPONSE)."
    case $kind in
    agent) say "  Set it by hand: consul acl set-agent-token agent <agent token>" ;;
    *) say "  (Consul older than 1.15?) Add \"token\": \"<agent token>\" to each service in consul.d/, or upgrade." ;;
    esac
  fi
done

# --- 6. the tokens, printed once -----------------------------------------------

echo
if [ -n "$MANAGEMENT" ]; then
  echo "Management token (bootstrap; can do anything - store it securely, offline):"
  echo "  $MANAGEMENT"
else
  echo "Management token: the one in CONSUL_HTTP_TOKEN (not printed)."
fi
echo
echo "consul-sync token ($READ_STATE; read-only: services and nodes)."
echo "Give it to consul-sync as CONSUL_TOKEN (1Password item: consul-acl-token):"
echo "  $READ_SECRET"
echo
echo "Agent token ($AGENT_STATE; this node's agent, service registration)."
echo "Set on the agent as:${AGENT_SET:- (nothing - see the warnings above)}"
echo "Put it in consul-server/tokens.env as CONSUL_HTTP_TOKEN=<token> and run"
echo "'docker compose up -d' again, for Registrator and 'docker exec consul consul reload':"
echo "  $AGENT_SECRET"
