# Sourced by the bench scripts that need PostgreSQL: a throwaway cluster in $work/pg, listening on
# a Unix socket in $work/sock only, as PORT (it names the socket file), with room for
# MAX_CONNECTIONS. Sets `bindir` and `url`; defines `as_pg` (runs a PostgreSQL program, as the
# postgres user when we are root, since initdb refuses root) and `pg_stop`, for the script's
# cleanup trap. `work` must exist.
# Usage: . bench/throwaway-pg.sh PORT [MAX_CONNECTIONS]   (from the repository root)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_stop() { as_pg "$bindir/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true; }
bindir=$(ci/ensure-postgres | sed -n 's/^PostgreSQL found: //p')
chmod 755 "$work"
mkdir -p "$work/pg" "$work/sock"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg" "$work/sock"
as_pg "$bindir/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
as_pg "$bindir/pg_ctl" -D "$work/pg" -l "$work/pg/log" -w \
  -o "-c listen_addresses='' -c unix_socket_directories=$work/sock -c max_connections=${2:-300} -p $1" start >/dev/null
url="host=$work/sock port=$1 user=postgres dbname=postgres"
