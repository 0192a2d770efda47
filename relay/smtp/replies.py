"""SMTP reply lines the relay itself produces (SES outcomes live in relay.ses.errors)."""

OK_SENDER = "250 2.1.0 Ok"
OK_RECIPIENT = "250 2.1.5 Ok"
OK_ALL_DROPPED = "250 2.0.0 Ok: not sent, every recipient is on the suppression list"

NOT_ALLOWED = "554 5.7.1 {peer} is not allowed to use this relay"
TOO_BUSY = "421 4.7.0 Too many connections; try again later"
SHUTTING_DOWN = "421 4.3.2 Relay shutting down; try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients; send the rest in another transaction"
SUPPRESSED_BOUNCE = "550 5.1.1 <{address}> is on the suppression list: it bounced permanently"
SUPPRESSED_COMPLAINT = "550 5.7.1 <{address}> is on the suppression list: the recipient complained"
SUPPRESSED_MANUAL = "550 5.7.1 <{address}> is on the suppression list"
STORE_UNAVAILABLE = "451 4.3.0 Suppression list unavailable; try again later"
INTERNAL_ERROR = "451 4.3.0 Internal relay error; try again later"
MESSAGE_TOO_BIG = "552 5.3.4 Message too big for this relay (limit {limit} bytes)"
SMTPUTF8_UNSUPPORTED = (
    "553 5.6.7 Non-ASCII addresses need SMTPUTF8, which this relay and Amazon SES do not support"
)
COMMAND_TOO_LONG = "500 5.5.2 Command line too long"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 998 characters)"
GUARD_PAUSED = "451 4.3.2 Relay paused to protect sender reputation ({reason}); try again later"
MEMORY_BUDGET_SPENT = (
    "452 4.3.1 Insufficient system storage: the relay holds too much mail in memory; try again later"
)

# Security (TLS, AUTH, sender authorisation, smuggling)
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_BAD_PLAIN = "501 5.5.2 Cannot split AUTH PLAIN value (authzid NUL user NUL password)"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_LOCKED_OUT = "421 4.7.0 Too many failed authentication attempts; try again later"
SENDER_NOT_ALLOWED = "550 5.7.1 User {user} may not send as <{address}>"
FROM_NOT_ALLOWED = "554 5.7.1 User {user} may not send with From: {address}"
BARE_NEWLINE = (
    "550 5.5.2 Message refused: bare <CR> or <LF> in message data (SMTP smuggling protection); "
    "end every line with <CR><LF>"
)

# Limits (smtp.max_connections_per_client, max_transactions_per_connection, data_timeout, headers)
CLIENT_TOO_BUSY = "421 4.7.0 Too many connections from your address; try again later"
TOO_MANY_TRANSACTIONS = "421 4.7.0 Too many messages in one connection; reconnect to send more"
DATA_TIMEOUT = "421 4.4.2 Message data took too long; closing connection"
TOO_MANY_HEADERS = "554 5.6.0 Message refused: more than {limit} header fields"
HEADERS_TOO_BIG = "554 5.6.0 Message refused: header section larger than {limit} bytes"
# PROXY protocol listeners (smtp.proxy_listen)
PROXY_NOT_TRUSTED = "554 5.7.1 {peer} is not a trusted proxy (smtp.trusted_proxies)"
