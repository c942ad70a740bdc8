-- One row per stored message, per recipient, and per DNSBL/DBL listing of its client.
-- The SQLite schema (../sqlite/) has the same tables and columns.
CREATE TABLE messages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,        -- the message's name ("queued as NAME")
    file TEXT,                        -- its file in the Maildir's new/ on host, or NULL
    host TEXT NOT NULL,               -- the machine that received it
    received TIMESTAMPTZ NOT NULL,
    session TEXT NOT NULL,
    peer_ip INET,
    peer_port INTEGER,
    network CIDR,                     -- the client's /24 (IPv4) or /48 (IPv6)
    helo TEXT,
    tls_version TEXT,
    tls_cipher TEXT,
    tls_sni TEXT,
    auth TEXT,
    sender TEXT NOT NULL,             -- '' for <>
    sender_domain TEXT,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,             -- of the message as received
    body_sha256 TEXT,                 -- of its body alone (after the first empty line)
    rule TEXT,
    rdns TEXT,                        -- the PTR names, space-separated
    fcrdns TEXT,
    confirmed TEXT,
    spf TEXT,
    dkim TEXT,                        -- each signature's result, comma-separated
    arc TEXT,
    dmarc TEXT,
    metadata JSONB NOT NULL,          -- the whole record (the sidecar's JSON)
    body BYTEA                        -- the stored message, up to --store-body-limit
);
CREATE INDEX messages_received ON messages (received);
CREATE INDEX messages_network ON messages (network);
CREATE INDEX messages_sender_domain ON messages (sender_domain);
CREATE TABLE recipients (
    message_id BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    PRIMARY KEY (message_id, position)
);
CREATE INDEX recipients_address ON recipients (address);
CREATE TABLE listings (
    message_id BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    list TEXT NOT NULL,               -- the DNSBL or DBL zone
    kind TEXT NOT NULL,               -- dnsbl or dbl
    subject TEXT NOT NULL,            -- the address or name that is listed
    codes TEXT NOT NULL,              -- the A answers, comma-separated
    reason TEXT NOT NULL              -- the TXT record
);
CREATE INDEX listings_message ON listings (message_id);
CREATE INDEX listings_list ON listings (list);
