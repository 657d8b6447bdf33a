-- pg_net 0.14.0 as plain SQL: a development shim, the local stack's stand-in
-- for Supabase's pg_net, which has no Debian package; never installed where
-- the real extension is. Schema `net`, types, tables, function names, argument
-- names, types, defaults, volatility/strictness and grants are upstream's, so
-- migrations run unchanged on Supabase.
--
-- What it implements: net.http_get, net.http_post and net.http_delete queue a
-- row in net.http_request_queue and return its id; responses land in
-- net._http_response; net.http_collect_response and the private helpers
-- (_urlencode_string, _encode_url_with_params_array, _await_response, ...)
-- behave like upstream's.
--
-- What it does not: there is no C background worker. local/net_dispatcher.ts
-- stands in for it: one dispatcher per database claims queued requests, sends
-- them concurrently and writes responses, and deletes responses older than its
-- TTL (upstream's pg_net.ttl). The pg_net.* settings (ttl, batch_size,
-- database_name) do not exist here; they are options of the dispatcher. Each
-- request also sends a NOTIFY on channel autoembed_net (delivered on commit)
-- so that the dispatcher starts at once instead of at its next poll.
--
-- Deviations from upstream, all invisible in the signatures: functions pin
-- search_path; http_collect_response returns its result (upstream 0.14.0's
-- fails with "query has no destination for result data"); a bad URL or
-- Content-Type fails with upstream's message but SQLSTATE 22023 and a detail
-- and hint; worker_restart() ends the dispatcher's sessions, which reconnect.

\echo Use "CREATE EXTENSION pg_net" to load this file. \quit

-- CREATE EXTENSION ... WITH SCHEMA extensions records `extensions` as the
-- extension's schema; like upstream, the objects live in `net` regardless.
create schema if not exists net;

------------------------------------------------------------------------------
-- Types
------------------------------------------------------------------------------

-- private: the HTTP methods the worker sends.
create domain net.http_method as text
check (
  value ilike 'get'
  or value ilike 'post'
  or value ilike 'delete'
);

-- public: lifecycle states of a request, as reported by http_collect_response.
create type net.request_status as enum ('PENDING', 'SUCCESS', 'ERROR');

-- public: a response from an HTTP server.
create type net.http_response as (
  status_code integer,
  headers jsonb,
  body text
);

-- public: a response wrapped with its request state.
create type net.http_response_result as (
  status net.request_status,
  message text,
  response net.http_response
);

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

-- private: requests waiting for the worker, which deletes each one as it
-- claims it. Unlogged, as upstream: a crash loses queued requests.
create unlogged table net.http_request_queue (
  id bigserial,
  method net.http_method not null,
  url text not null,
  headers jsonb not null,
  body bytea,
  timeout_milliseconds int not null
);

-- private: one row per finished request (id = the request's id): the response,
-- or error_msg when none came. The worker deletes rows older than its TTL.
create unlogged table net._http_response (
  id bigint,
  status_code integer,
  content_type text,
  headers jsonb,
  content text,
  timed_out bool,
  error_msg text,
  created timestamptz not null default now()
);

create index on net._http_response (created);

------------------------------------------------------------------------------
-- URL encoding (C functions upstream, built on curl)
------------------------------------------------------------------------------

-- private: percent-encodes every byte of the UTF-8 form of `string` except
-- ASCII letters, digits and - . _ ~ (what curl_easy_escape leaves alone).
create function net._urlencode_string(
  string varchar -- the text to encode
)
returns text
language sql
immutable
strict
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(
    string_agg(
      case
        when b.byte between 48 and 57 -- 0-9
          or b.byte between 65 and 90 -- A-Z
          or b.byte between 97 and 122 -- a-z
          or b.byte in (45, 46, 95, 126) -- - . _ ~
          then chr(b.byte)
        else '%' || upper(lpad(to_hex(b.byte), 2, '0'))
      end,
      '' order by b.pos
    ),
    ''
  )
  from (
    select g.pos, get_byte(raw.bytes, g.pos) as byte
    from convert_to(string, 'UTF8') as raw (bytes),
      generate_series(0, length(raw.bytes) - 1) as g (pos)
  ) as b
$$;

-- private: appends already-encoded `key=value` items to the query string of
-- `url`, joined with & and placed before any #fragment; an empty path becomes
-- "/", as curl's URL API returns it.
create function net._encode_url_with_params_array(
  url text, -- an absolute URL; may already carry a query string
  params_array text[] -- encoded key=value items; NULL items are skipped
)
returns text
language plpgsql
immutable
strict
set search_path = pg_catalog, pg_temp
as $$
declare
  parts text[] := regexp_match(
    url, '^([A-Za-z][A-Za-z0-9+.-]*://[^/?#]+)([^?#]*)(?:\?([^#]*))?(#.*)?$');
  query text;
  param text;
begin
  if parts is null or url ~ '[[:space:][:cntrl:]]' then
    raise exception 'URL using bad/illegal format or missing URL'
      using errcode = 'invalid_parameter_value',
        detail = format('%L is not an absolute URL without spaces.', url),
        hint = 'Pass a URL such as https://example.com/path, with scheme and host.';
  end if;
  query := coalesce(parts[3], '');
  foreach param in array params_array loop
    continue when param is null;
    if query <> '' and right(query, 1) <> '&' then
      query := query || '&';
    end if;
    query := query || param;
  end loop;
  return parts[1]
    || coalesce(nullif(parts[2], ''), '/')
    || case when query <> '' then '?' || query else '' end
    || coalesce(parts[4], '');
end
$$;

------------------------------------------------------------------------------
-- The worker (here: local/net_dispatcher.ts)
------------------------------------------------------------------------------

-- private: raises unless something drains this database's request queue: a
-- real pg_net worker or the dispatcher, whose sessions carry the
-- application_name 'autoembed pg_net dispatcher'.
create function net.check_worker_is_up()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (
    select
    from pg_stat_activity a
    where a.backend_type ilike '%pg_net%'
      or (a.datname = current_database() and a.application_name = 'autoembed pg_net dispatcher')
  ) then
    raise exception using
      message = 'the pg_net background worker is not up',
      detail = format('No pg_net dispatcher is connected to database %I; queued requests wait.',
        current_database()),
      hint = 'Start one: deno run -A local/net_dispatcher.ts --db-url <url> (local/main.ts start runs one).';
  end if;
end
$$;

comment on function net.check_worker_is_up() is
  'raises an exception if nothing is draining the request queue (the pg_net dispatcher is not up), otherwise returns nothing';

-- public: restarts the worker. Here: ends the dispatcher's sessions on this
-- database; it reconnects with backoff. Needs the right to signal them.
create function net.worker_restart()
returns bool
language sql
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(bool_and(pg_terminate_backend(a.pid)), true)
  from pg_stat_activity a
  where a.datname = current_database() and a.application_name = 'autoembed pg_net dispatcher'
$$;

------------------------------------------------------------------------------
-- Requests
------------------------------------------------------------------------------

-- public: queues an HTTP GET and returns the request id. The request is sent
-- after the transaction commits; its response appears in net._http_response.
create function net.http_get(
  url text, -- url for the request
  params jsonb default '{}'::jsonb, -- key/value pairs to be url encoded and appended to the `url`
  headers jsonb default '{}'::jsonb, -- key/values to be included in request headers
  timeout_milliseconds int default 5000 -- the maximum number of milliseconds the request may take
)
returns bigint
strict
volatile
parallel safe
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  request_id bigint;
  params_array text[];
begin
  select coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
  into params_array
  from jsonb_each_text(params);

  insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
  values ('GET', net._encode_url_with_params_array(url, params_array), headers, timeout_milliseconds)
  returning id into request_id;

  -- Upstream wakes its worker through a latch; the dispatcher LISTENs.
  perform pg_notify('autoembed_net', '');
  return request_id;
end
$$;

-- public: queues an HTTP POST of a JSON body and returns the request id. A
-- Content-Type header is added when missing and must be application/json.
create function net.http_post(
  url text, -- url for the request
  body jsonb default '{}'::jsonb, -- body of the POST request
  params jsonb default '{}'::jsonb, -- key/value pairs to be url encoded and appended to the `url`
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb, -- key/values to be included in request headers
  timeout_milliseconds int default 5000 -- the maximum number of milliseconds the request may take
)
returns bigint
volatile
parallel safe
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  request_id bigint;
  params_array text[];
  content_type text;
begin
  select h.value
  into content_type
  from jsonb_each_text(coalesce(headers, '{}'::jsonb)) as h (name, value)
  where lower(h.name) = 'content-type'
  limit 1;

  if content_type is null then
    headers := headers || '{"Content-Type": "application/json"}'::jsonb;
  elsif content_type <> 'application/json' then
    raise exception 'Content-Type header must be "application/json"'
      using errcode = 'invalid_parameter_value',
        detail = format('The headers say Content-Type %L.', content_type),
        hint = 'net.http_post sends JSON; omit Content-Type or set it to application/json.';
  end if;

  select coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
  into params_array
  from jsonb_each_text(params);

  insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
  values (
    'POST',
    net._encode_url_with_params_array(url, params_array),
    headers,
    convert_to(body::text, 'UTF8'),
    timeout_milliseconds
  )
  returning id into request_id;

  perform pg_notify('autoembed_net', '');
  return request_id;
end
$$;

-- public: queues an HTTP DELETE (no body, as in 0.14.0) and returns the
-- request id.
create function net.http_delete(
  url text, -- url for the request
  params jsonb default '{}'::jsonb, -- key/value pairs to be url encoded and appended to the `url`
  headers jsonb default '{}'::jsonb, -- key/values to be included in request headers
  timeout_milliseconds int default 5000 -- the maximum number of milliseconds the request may take
)
returns bigint
strict
volatile
parallel safe
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  request_id bigint;
  params_array text[];
begin
  select coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
  into params_array
  from jsonb_each_text(params);

  insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
  values ('DELETE', net._encode_url_with_params_array(url, params_array), headers, timeout_milliseconds)
  returning id into request_id;

  perform pg_notify('autoembed_net', '');
  return request_id;
end
$$;

------------------------------------------------------------------------------
-- Responses
------------------------------------------------------------------------------

-- private: blocks until the response of `request_id` has been written.
create function net._await_response(
  request_id bigint -- id returned by http_get/http_post/http_delete
)
returns bool
volatile
parallel safe
strict
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  while not exists (select from net._http_response r where r.id = request_id) loop
    perform pg_sleep(0.05);
  end loop;
  return true;
end
$$;

-- private: the response of `request_id` as a result: ERROR with a message
-- while it is pending, unknown or failed, SUCCESS with the response otherwise.
create function net._http_collect_response(
  request_id bigint, -- id returned by http_get/http_post/http_delete
  async bool default true -- true: return at once; false: wait for the response
)
returns net.http_response_result
volatile
parallel safe
strict
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  rec net._http_response;
begin
  if not async then
    perform net._await_response(request_id);
  end if;

  select * into rec from net._http_response r where r.id = request_id;

  -- A request still in flight and one that does not exist look the same here.
  if rec is null or rec.error_msg is not null then
    return (
      'ERROR',
      coalesce(rec.error_msg, 'request matching request_id not found'),
      null
    )::net.http_response_result;
  end if;

  return (
    'SUCCESS',
    'ok',
    (rec.status_code, rec.headers, rec.content)::net.http_response
  )::net.http_response_result;
end
$$;

-- public (deprecated upstream): _http_collect_response with a notice.
create function net.http_collect_response(
  request_id bigint, -- id returned by http_get/http_post/http_delete
  async bool default true -- true: return at once; false: wait for the response
)
returns net.http_response_result
volatile
parallel safe
strict
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise notice 'The net.http_collect_response function is deprecated.';
  return net._http_collect_response(request_id, async);
end
$$;

------------------------------------------------------------------------------
-- Privileges, as upstream: everyone may queue requests and read responses
-- (functions keep the default EXECUTE for PUBLIC). A platform that wants less
-- revokes after CREATE EXTENSION, as Supabase does.
------------------------------------------------------------------------------

grant usage on schema net to public;
grant all on all sequences in schema net to public;
grant all on all tables in schema net to public;
