"""A real Flight SQL client for tests/it/flight_sql.rs: the ADBC Flight SQL driver (Go, shipped
in the `adbc-driver-flightsql` wheel) through the ADBC driver manager's DB-API.

    flight_sql_client.py URI AUTH COMMAND [ARG ...]

AUTH: `-` (none), `bearer:TOKEN` (the authorization header) or `basic:USER:PASSWORD` (the
handshake). Prints one JSON object; on an error, {"error": message} and exit status 3.

Commands:
    query SQL                 rows as lists, the schema, the batches received
    prepared SQL PARAM...     the same, with parameters (ints when they parse as ints)
    stream SQL                reads the result batch by batch: rows and batches counted
    execute SQL               runs a statement (an INSERT): the rows it reports
    objects                   adbc_get_objects: catalog -> schema -> tables
    table_schema CATALOG SCHEMA TABLE
    info                      adbc_get_info
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flightsql


def connect(uri, auth):
    kwargs = {}
    if auth.startswith("bearer:"):
        kwargs["adbc.flight.sql.authorization_header"] = "Bearer " + auth[len("bearer:"):]
    elif auth.startswith("basic:"):
        user, password = auth[len("basic:"):].split(":", 1)
        kwargs["username"] = user
        kwargs["password"] = password
    return flightsql.connect(uri, db_kwargs=kwargs)


def schema_of(schema):
    return [[f.name, str(f.type)] for f in schema]


def rows_of(table):
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [list(r) for r in zip(*columns)]


def param(text):
    try:
        return int(text)
    except ValueError:
        return text


def main():
    uri, auth, command, *args = sys.argv[1:]
    try:
        conn = connect(uri, auth)
        cur = conn.cursor()
        if command in ("query", "prepared"):
            sql = args[0]
            params = tuple(param(a) for a in args[1:]) if command == "prepared" else None
            cur.execute(sql, params)
            reader = cur.fetch_record_batch()
            batches = list(reader)
            import pyarrow as pa

            table = pa.Table.from_batches(batches, schema=reader.schema)
            out = {
                "schema": schema_of(reader.schema),
                "rows": rows_of(table),
                "batches": len(batches),
            }
        elif command == "stream":
            cur.execute(args[0])
            reader = cur.fetch_record_batch()
            rows = 0
            batches = 0
            largest = 0
            for batch in reader:
                rows += batch.num_rows
                batches += 1
                largest = max(largest, batch.num_rows)
            out = {"rows": rows, "batches": batches, "largest_batch": largest}
        elif command == "execute":
            cur.execute(args[0])
            try:
                fetched = cur.fetchall()
            except Exception:  # noqa: BLE001 - a statement without a result set
                fetched = []
            out = {"rowcount": cur.rowcount, "fetched": [list(r) for r in fetched]}
        elif command == "objects":
            objects = conn.adbc_get_objects().read_all().to_pylist()
            out = {
                c["catalog_name"]: {
                    s["db_schema_name"]: sorted(t["table_name"] for t in (s["db_schema_tables"] or []))
                    for s in (c["catalog_db_schemas"] or [])
                }
                for c in objects
            }
        elif command == "table_schema":
            catalog, schema, table = args
            out = {"schema": schema_of(conn.adbc_get_table_schema(table, catalog_filter=catalog, db_schema_filter=schema))}
        elif command == "info":
            out = {k: str(v) for k, v in conn.adbc_get_info().items()}
        else:
            raise SystemExit(f"unknown command {command}")
        cur.close()
        conn.close()
    except Exception as e:  # noqa: BLE001 - reported to the test
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(3)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
