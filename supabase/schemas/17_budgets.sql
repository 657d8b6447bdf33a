-- autoembed schema 17: one rate budget per provider account and model
-- (I17). Every caller (each worker process, each push call of the embed
-- function, the search function's query embeddings) reserves its request
-- and its tokens here before it calls the provider, and settles after: the
-- budget is one row, changed by one short call on each side, and no lock is
-- held across a provider call.
--
-- The budget is a virtual-time token bucket per dimension (requests,
-- tokens): `*_tat` is when the bucket would be full again. A reservation
-- moves it on by its cost over the rate and says how long to wait; callers
-- sleep that long and call, so they start in the order they reserved.
-- The limits are the provider's (learned from its x-ratelimit-* headers),
-- or set by hand (util.set_provider_limits) for providers that send none;
-- a budget that knows no limit lets calls through at once.
--
-- Shares of a limit L per minute (settings budget_burst_percent b and
-- budget_search_percent s): backfill draws from a bucket of b*L refilled at
-- (1 - b - 2s)*L a minute; search draws from its own bucket of s*L refilled
-- at s*L a minute, and falls back to the backfill bucket when that is
-- empty. So any one-minute window holds at most L (a provider enforcing a
-- sliding window, the strictest reading, sees no excess), and a backfill
-- never makes a search wait.

insert into util.settings (name, value, description) values
  ('budget_burst_percent', '2',
   'share of a provider rate limit (per minute) that may go out at once; the backfill rate is what the burst and the search share leave'),
  ('budget_search_percent', '2',
   'share of a provider rate limit kept for search queries (twice this is held back from backfill)'),
  ('budget_learning_seconds', '5',
   'how long other calls wait for the first call to a provider account and model to teach its rate limits')
on conflict (name) do update set description = excluded.description;

-------------------------------------------------------------------------------
-- Limits set by hand (public to read; change with util.set_provider_limits)
-------------------------------------------------------------------------------

create table if not exists util.provider_rate_limits (
  -- the endpoint ('' for every endpoint), as OPENAI_BASE_URL names it
  base_url text not null default '',
  model text not null,
  requests_per_minute int check (requests_per_minute > 0),
  tokens_per_minute bigint check (tokens_per_minute > 0),
  updated_at timestamptz not null default now(),
  primary key (base_url, model)
);

-------------------------------------------------------------------------------
-- Budgets (public to read): one row per provider account and model
-------------------------------------------------------------------------------

create table if not exists util.provider_budgets (
  -- the account: its endpoint and a fingerprint of its key (never the key)
  base_url text not null,
  key_fingerprint text not null,
  model text not null,
  -- what the provider's headers said, and when
  learned_requests_per_minute int,
  learned_tokens_per_minute bigint,
  learned_at timestamptz,
  -- below 1 after 429s the budget did not foresee; back to 1 with successes
  scale real not null default 1,
  -- when each bucket would be full again (virtual time)
  requests_tat timestamptz not null default '-infinity',
  tokens_tat timestamptz not null default '-infinity',
  search_requests_tat timestamptz not null default '-infinity',
  search_tokens_tat timestamptz not null default '-infinity',
  -- no call starts before this (a 429's Retry-After)
  paused_until timestamptz not null default '-infinity',
  -- until the first answer teaches the limits, only the first call goes
  learning_until timestamptz,
  calls bigint not null default 0,
  rate_limited bigint not null default 0,
  last_rate_limited_at timestamptz,
  primary key (base_url, key_fingerprint, model)
);

-- internal: the limits a budget works with: by hand when set (the endpoint's
-- own row before the '' row), else learned, times the budget's scale.
create or replace function util._budget_limits(
  b util.provider_budgets,
  out requests_per_minute float8,
  out tokens_per_minute float8,
  out source text
)
language sql
stable
set search_path = ''
as $$
  select coalesce(m.requests_per_minute, b.learned_requests_per_minute) * b.scale,
         coalesce(m.tokens_per_minute, b.learned_tokens_per_minute) * b.scale,
         case when m.model is not null then 'manual'
              when b.learned_at is not null then 'headers' end
    from (select) one
    left join lateral (select l.model, l.requests_per_minute, l.tokens_per_minute
                         from util.provider_rate_limits l
                        where l.model = b.model and l.base_url in (b.base_url, '')
                        order by l.base_url desc limit 1) m on true
$$;

-- internal: one reservation on a bucket of `capacity_share` of a limit of
-- `per_minute`, refilled at `rate_share` of it a minute: the bucket's new
-- full time and when the draw may start (epoch seconds). No limit: no wait.
create or replace function util._budget_slot(
  tat float8,           -- when the bucket is full again, epoch seconds
  now_s float8,         -- now, epoch seconds
  cost float8,          -- what the call draws (requests or tokens)
  per_minute float8,    -- the limit, or null
  capacity_share float8,
  rate_share float8,
  out new_tat float8,
  out start_at float8
)
language sql
immutable
set search_path = ''
as $$
  select case when per_minute is null or per_minute <= 0 then tat
              else greatest(tat, now_s) + cost / (per_minute * rate_share / 60) end,
         case when per_minute is null or per_minute <= 0 then now_s
              else greatest(tat, now_s) + cost / (per_minute * rate_share / 60)
                   - (per_minute * capacity_share) / (per_minute * rate_share / 60) end
$$;

-- internal: reserves `requests` and `tokens` on the budget of (base_url,
-- key_fingerprint, model), creating it on first use. Returns how long to
-- wait before calling (0: now), and whether the reservation was made: one
-- that would wait longer than `max_wait_ms` is not (the caller hands its
-- work back), so nothing is booked that no one will use. `priority`
-- 'search' draws from the search share first, starting at once while it
-- lasts; 'backfill' queues in order. A budget that knows no limit yet
-- lets its first backfill call go and has the others wait (lane
-- 'learning', then reserve again) until that call's answer comes, whose
-- headers teach the limits (at most budget_learning_seconds); then, with no
-- limit known, every call goes at once. Also returns the tokens a backfill
-- burst may hold (null: no limit known), so callers size their batches to it.
create or replace function util._budget_reserve(
  base_url text,
  key_fingerprint text,
  model text,
  tokens int,                      -- the call's tokens, by the model's tokenizer
  requests int default 1,
  priority text default 'backfill', -- 'backfill' or 'search'
  max_wait_ms int default 60000,
  out wait_ms int,
  out granted boolean,
  out lane text,
  out burst_tokens float8
)
language plpgsql
set search_path = ''
as $$
declare
  b util.provider_budgets;
  lim record;
  now_s float8 := extract(epoch from pg_catalog.clock_timestamp());
  burst float8 := util._setting('budget_burst_percent')::float8 / 100;
  share float8 := util._setting('budget_search_percent')::float8 / 100;
  paused float8;
  req record;
  tok record;
  start_at float8;
begin
  if priority not in ('backfill', 'search') then
    raise exception 'autoembed: unknown budget priority "%"', priority
      using errcode = 'AE003', hint = 'Use backfill or search.';
  end if;
  insert into util.provider_budgets as p (base_url, key_fingerprint, model)
  values (_budget_reserve.base_url, _budget_reserve.key_fingerprint, _budget_reserve.model)
  on conflict do nothing;
  -- Locked for this call's few statements only: never across a provider call.
  select * into b from util.provider_budgets p
   where p.base_url = _budget_reserve.base_url and p.key_fingerprint = _budget_reserve.key_fingerprint
     and p.model = _budget_reserve.model
     for update;
  select * into lim from util._budget_limits(b);
  burst_tokens := lim.tokens_per_minute * burst;
  paused := greatest(extract(epoch from b.paused_until), now_s);

  -- No limit known, none set: the first call goes alone, to learn them.
  if lim.source is null and priority = 'backfill' then
    if b.learning_until is null then
      update util.provider_budgets p
         set learning_until = pg_catalog.clock_timestamp()
                              + pg_catalog.make_interval(secs => util._setting('budget_learning_seconds')::float8),
             calls = p.calls + 1
       where p.base_url = b.base_url and p.key_fingerprint = b.key_fingerprint and p.model = b.model;
      wait_ms := ceil((paused - now_s) * 1000);
      granted := wait_ms <= max_wait_ms;
      lane := 'backfill';
      return;
    elsif extract(epoch from b.learning_until) > now_s then
      -- Asked again shortly: the first answer usually comes well before learning_until.
      wait_ms := ceil((greatest(least(extract(epoch from b.learning_until), now_s + 0.2), paused) - now_s) * 1000);
      granted := wait_ms <= max_wait_ms;
      lane := 'learning';
      return;
    end if;
  end if;

  if priority = 'search' then
    select * into req from util._budget_slot(extract(epoch from b.search_requests_tat), now_s, requests,
                                             lim.requests_per_minute, share, share);
    select * into tok from util._budget_slot(extract(epoch from b.search_tokens_tat), now_s, tokens,
                                             lim.tokens_per_minute, share, share);
    if greatest(req.start_at, tok.start_at) <= now_s then
      wait_ms := ceil((paused - now_s) * 1000);
      granted := wait_ms <= max_wait_ms;
      lane := 'search';
      if granted then
        update util.provider_budgets p
           set search_requests_tat = pg_catalog.to_timestamp(req.new_tat),
               search_tokens_tat = pg_catalog.to_timestamp(tok.new_tat), calls = p.calls + 1
         where p.base_url = b.base_url and p.key_fingerprint = b.key_fingerprint and p.model = b.model;
      end if;
      return;
    end if;
  end if;

  select * into req from util._budget_slot(extract(epoch from b.requests_tat), now_s, requests,
                                           lim.requests_per_minute, burst, 1 - burst - 2 * share);
  select * into tok from util._budget_slot(extract(epoch from b.tokens_tat), now_s, tokens,
                                           lim.tokens_per_minute, burst, 1 - burst - 2 * share);
  start_at := greatest(req.start_at, tok.start_at, paused);
  wait_ms := ceil((start_at - now_s) * 1000);
  granted := wait_ms <= max_wait_ms;
  lane := 'backfill';
  if granted then
    update util.provider_budgets p
       set requests_tat = pg_catalog.to_timestamp(req.new_tat),
           tokens_tat = pg_catalog.to_timestamp(tok.new_tat), calls = p.calls + 1
     where p.base_url = b.base_url and p.key_fingerprint = b.key_fingerprint and p.model = b.model;
  end if;
end
$$;

-- internal: settles a reservation after its call. `used_tokens` (the
-- response's usage; 0 for a call that failed before the provider counted
-- it) returns the rest of `reserved_tokens` to the bucket it came from.
-- `limits` carries what the response's headers said: limit_requests,
-- limit_tokens (learned as the limits), remaining_requests and
-- remaining_tokens (when the provider says less remains than the bucket
-- holds, the bucket moves: the provider is the truth, e.g. another client
-- shares the key). A 429 (`rate_limited`) pauses the budget for
-- `retry_after_ms` (1 s when the provider did not say) and shrinks it by a
-- tenth, down to half; each success gives back a fiftieth.
create or replace function util._budget_settle(
  base_url text,
  key_fingerprint text,
  model text,
  lane text,             -- as util._budget_reserve returned it
  reserved_tokens int,
  used_tokens int,
  rate_limited boolean default false,
  retry_after_ms int default null,
  limits jsonb default '{}'
)
returns void
language plpgsql
set search_path = ''
as $$
declare
  b util.provider_budgets;
  lim record;
  now_s float8 := extract(epoch from pg_catalog.clock_timestamp());
  burst float8 := util._setting('budget_burst_percent')::float8 / 100;
  share float8 := util._setting('budget_search_percent')::float8 / 100;
  search boolean := lane = 'search';
  rate_share float8;
  refund float8 := greatest(coalesce(reserved_tokens, 0) - coalesce(used_tokens, 0), 0);
  next_tokens float8;
  next_requests float8;
  remaining_tokens float8 := (limits ->> 'remaining_tokens')::float8;
  remaining_requests float8 := (limits ->> 'remaining_requests')::float8;
begin
  select * into b from util.provider_budgets p
   where p.base_url = _budget_settle.base_url and p.key_fingerprint = _budget_settle.key_fingerprint
     and p.model = _budget_settle.model
     for update;
  if not found then
    return;
  end if;
  if limits ? 'limit_requests' or limits ? 'limit_tokens' then
    b.learned_requests_per_minute := coalesce((limits ->> 'limit_requests')::int, b.learned_requests_per_minute);
    b.learned_tokens_per_minute := coalesce((limits ->> 'limit_tokens')::bigint, b.learned_tokens_per_minute);
    b.learned_at := pg_catalog.clock_timestamp();
  end if;
  select * into lim from util._budget_limits(b);
  rate_share := case when search then share else 1 - burst - 2 * share end;
  next_tokens := extract(epoch from case when search then b.search_tokens_tat else b.tokens_tat end);
  next_requests := extract(epoch from case when search then b.search_requests_tat else b.requests_tat end);
  if lim.tokens_per_minute > 0 then
    -- Unused tokens back, never into the past (a full bucket stays full).
    next_tokens := greatest(next_tokens - refund / (lim.tokens_per_minute * rate_share / 60),
                           least(next_tokens, now_s));
    -- Less remains than the bucket holds: it holds no more than that.
    if remaining_tokens is not null and not search then
      next_tokens := greatest(next_tokens, now_s + (lim.tokens_per_minute * burst - remaining_tokens)
                                                 / (lim.tokens_per_minute * rate_share / 60));
    end if;
  end if;
  if lim.requests_per_minute > 0 and remaining_requests is not null and not search then
    next_requests := greatest(next_requests, now_s + (lim.requests_per_minute * burst - remaining_requests)
                                                   / (lim.requests_per_minute * rate_share / 60));
  end if;
  update util.provider_budgets p
     set learned_requests_per_minute = b.learned_requests_per_minute,
         learned_tokens_per_minute = b.learned_tokens_per_minute,
         learned_at = b.learned_at,
         tokens_tat = case when search then p.tokens_tat else pg_catalog.to_timestamp(next_tokens) end,
         requests_tat = case when search then p.requests_tat else pg_catalog.to_timestamp(next_requests) end,
         search_tokens_tat = case when search then pg_catalog.to_timestamp(next_tokens) else p.search_tokens_tat end,
         scale = case when _budget_settle.rate_limited then greatest(0.5, p.scale * 0.9) else least(1, p.scale + 0.02) end,
         paused_until = case when _budget_settle.rate_limited
                             then greatest(p.paused_until, pg_catalog.clock_timestamp()
                                  + pg_catalog.make_interval(secs => coalesce(retry_after_ms, 1000) / 1000.0))
                             else p.paused_until end,
         rate_limited = p.rate_limited + case when _budget_settle.rate_limited then 1 else 0 end,
         -- An answer (headers or none) ends the learning: the others need not wait it out.
         learning_until = case when not _budget_settle.rate_limited
                               then least(p.learning_until, pg_catalog.clock_timestamp())
                               else p.learning_until end,
         last_rate_limited_at = case when _budget_settle.rate_limited then pg_catalog.clock_timestamp() else p.last_rate_limited_at end
   where p.base_url = b.base_url and p.key_fingerprint = b.key_fingerprint and p.model = b.model;
end
$$;

-- public: sets the rate limits of `model` at an endpoint by hand, for
-- providers that send no x-ratelimit-* headers (or to leave part of a
-- shared key's limit to others). They take precedence over what headers
-- say. Nulls for both limits remove the setting.
create or replace function util.set_provider_limits(
  model text,                      -- the model name as tables name it
  requests_per_minute int default null,
  tokens_per_minute bigint default null,
  base_url text default ''         -- OPENAI_BASE_URL of the endpoint; '' for every endpoint
)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if model is null or model = '' then
    raise exception 'autoembed: set_provider_limits needs a model'
      using errcode = 'AE003', hint = 'Name the model as the tables name it, e.g. text-embedding-3-small.';
  end if;
  if coalesce(requests_per_minute, 1) <= 0 or coalesce(tokens_per_minute, 1) <= 0 then
    raise exception 'autoembed: rate limits must be positive'
      using errcode = 'AE003', detail = pg_catalog.format('requests_per_minute %s, tokens_per_minute %s',
                                                          requests_per_minute, tokens_per_minute),
            hint = 'Pass null for a limit the provider does not have.';
  end if;
  if requests_per_minute is null and tokens_per_minute is null then
    delete from util.provider_rate_limits l
     where l.model = set_provider_limits.model and l.base_url = coalesce(set_provider_limits.base_url, '');
    return;
  end if;
  insert into util.provider_rate_limits as l (base_url, model, requests_per_minute, tokens_per_minute)
  values (coalesce(set_provider_limits.base_url, ''), set_provider_limits.model,
          set_provider_limits.requests_per_minute, set_provider_limits.tokens_per_minute)
  on conflict on constraint provider_rate_limits_pkey do update
     set requests_per_minute = excluded.requests_per_minute,
         tokens_per_minute = excluded.tokens_per_minute, updated_at = now();
end
$$;
