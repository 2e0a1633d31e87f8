vcl 4.1;
# Varnish edge in front of `vedge origin` (run.sh templates @ORIGIN_PORT@). Same policy as
# shared/bench-peers/conf/varnish-edge.vcl: manifests ttl 2 s (+2 s grace), segments 1 d (+1 h
# grace); request coalescing is built in (waiting list) and do_stream is on by default.
backend origin { .host = "127.0.0.1"; .port = "@ORIGIN_PORT@"; .first_byte_timeout = 10s; }

sub vcl_recv {
    set req.backend_hint = origin;
    if (req.method != "GET" && req.method != "HEAD") { return (pass); }
    unset req.http.Cookie;
    unset req.http.Authorization;
    return (hash);
}

sub vcl_backend_response {
    if (bereq.url ~ "\.(m3u8|mpd)(\?.*)?$") {
        set beresp.ttl = 2s;
        set beresp.grace = 2s;
    } elsif (bereq.url ~ "\.(ts|m4s|mp4|aac|vtt)(\?.*)?$") {
        set beresp.ttl = 1d;
        set beresp.grace = 1h;
    } else {
        set beresp.ttl = 10s;
    }
    unset beresp.http.Set-Cookie;
    unset beresp.http.Cache-Control;
    return (deliver);
}

sub vcl_deliver {
    if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; }
}
