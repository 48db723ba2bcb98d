//! Hand-kept schema shared by both backends: only types Diesel's MultiConnection
//! supports (BigInt, Integer, Text, Timestamp). Mirrors migrations/{sqlite,postgres}.

diesel::table! {
    plans (id) {
        id -> BigInt,
        name -> Text,
        monthly_allowance -> BigInt,
        is_default -> Integer,
        created_at -> Timestamp,
        requests_per_minute -> Nullable<Integer>,
        requests_per_day -> Nullable<Integer>,
        requests_per_month -> Nullable<Integer>,
        monthly_price -> Nullable<BigInt>,
        input_allowance -> Nullable<BigInt>,
        output_allowance -> Nullable<BigInt>,
        overage_cap -> Nullable<BigInt>,
        overage_price -> Nullable<BigInt>,
        distributor_id -> BigInt,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        external_id -> Nullable<Text>,
        email -> Nullable<Text>,
        name -> Nullable<Text>,
        plan_id -> BigInt,
        suspended_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        librechat_role -> Nullable<Text>,
        plan_source -> Text,
        distributor_id -> BigInt,
    }
}

diesel::table! {
    balances (user_id) {
        user_id -> BigInt,
        cycle -> Text,
        allowance_left -> BigInt,
        credits -> BigInt,
        held -> BigInt,
        used_this_cycle -> BigInt,
        updated_at -> Timestamp,
        exhausted_at -> Nullable<Timestamp>,
        notice_due -> Nullable<Timestamp>,
        minute_start -> Nullable<Timestamp>,
        minute_requests -> Integer,
        request_day -> Nullable<Text>,
        day_requests -> Integer,
        request_cycle -> Nullable<Text>,
        cycle_requests -> Integer,
        usage_cycle -> Nullable<Text>,
        input_used -> BigInt,
        output_used -> BigInt,
        overage_used -> BigInt,
        overage_cost -> BigInt,
    }
}

diesel::table! {
    holds (request_id) {
        request_id -> Text,
        user_id -> BigInt,
        amount -> BigInt,
        model -> Text,
        endpoint -> Text,
        stream -> Integer,
        instance_id -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        prompt_tokens -> Nullable<BigInt>,
        prompt_charge -> Nullable<BigInt>,
        counted -> Integer,
        input_held -> BigInt,
        output_held -> BigInt,
        credits_held -> Nullable<BigInt>,
        plan_id -> Nullable<BigInt>,
        distributor_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    ledger (id) {
        id -> BigInt,
        user_id -> BigInt,
        kind -> Text,
        delta_allowance -> BigInt,
        delta_credits -> BigInt,
        allowance_after -> BigInt,
        credits_after -> BigInt,
        cycle -> Text,
        actor -> Text,
        note -> Nullable<Text>,
        request_id -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    usage_records (id) {
        id -> BigInt,
        request_id -> Text,
        user_id -> BigInt,
        model -> Text,
        endpoint -> Text,
        stream -> Integer,
        prompt_tokens -> BigInt,
        completion_tokens -> BigInt,
        charged -> BigInt,
        estimated -> Integer,
        outcome -> Text,
        status -> Integer,
        latency_ms -> BigInt,
        ttfb_ms -> Nullable<BigInt>,
        created_at -> Timestamp,
        overage_tokens -> BigInt,
        overage_cost -> BigInt,
        plan_id -> Nullable<BigInt>,
        conversation_id -> Nullable<Text>,
    }
}

diesel::table! {
    plan_models (plan_id, model) {
        plan_id -> BigInt,
        model -> Text,
    }
}

diesel::table! {
    plan_roles (role) {
        role -> Text,
        plan_id -> BigInt,
    }
}

diesel::table! {
    model_weights (model) {
        model -> Text,
        input_milli -> BigInt,
        output_milli -> BigInt,
        updated_at -> Timestamp,
        image_tokens -> Nullable<BigInt>,
        call_extra -> Nullable<BigInt>,
    }
}

diesel::table! {
    settings (key) {
        key -> Text,
        value -> Text,
    }
}

diesel::table! {
    admins (id) {
        id -> BigInt,
        email -> Text,
        password_hash -> Text,
        disabled_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        distributor_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    instances (id) {
        id -> Text,
        started_at -> Timestamp,
        heartbeat_at -> Timestamp,
        run_id -> Nullable<Text>,
        owner -> Nullable<Text>,
    }
}

diesel::table! {
    alerts (id) {
        id -> BigInt,
        user_id -> BigInt,
        cycle -> Text,
        threshold -> Integer,
        used_this_cycle -> BigInt,
        allowance_left -> BigInt,
        credits -> BigInt,
        recipient -> Nullable<Text>,
        delivery -> Text,
        request_id -> Nullable<Text>,
        created_at -> Timestamp,
        rearmed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    outbox (id) {
        id -> BigInt,
        alert_id -> Nullable<BigInt>,
        credit_request_id -> Nullable<BigInt>,
        kind -> Text,
        role -> Text,
        recipient -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
        limit_hit_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    limit_hits (id) {
        id -> BigInt,
        user_id -> BigInt,
        period -> Text,
        period_key -> Text,
        request_limit -> Integer,
        resets_at -> Timestamp,
        recipient -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    audit_log (id) {
        id -> BigInt,
        actor -> Text,
        action -> Text,
        user_id -> Nullable<BigInt>,
        details -> Text,
        created_at -> Timestamp,
        distributor_id -> BigInt,
    }
}

diesel::table! {
    login_failures (id) {
        id -> BigInt,
        email -> Text,
        address -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    user_tokens (token_hash) {
        token_hash -> Text,
        user_id -> BigInt,
        kind -> Text,
        expires_at -> Timestamp,
        created_at -> Timestamp,
    }
}

diesel::table! {
    rate_events (id) {
        id -> BigInt,
        kind -> Text,
        subject -> Text,
        address -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    credit_requests (id) {
        id -> BigInt,
        user_id -> BigInt,
        tokens -> BigInt,
        note -> Nullable<Text>,
        state -> Text,
        decided_by -> Nullable<Text>,
        reason -> Nullable<Text>,
        decided_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    code_batches (id) {
        id -> BigInt,
        tokens -> BigInt,
        codes -> Integer,
        expires_at -> Timestamp,
        note -> Nullable<Text>,
        created_by -> Text,
        created_at -> Timestamp,
        distributor_id -> BigInt,
    }
}

diesel::table! {
    redeem_codes (code_hash) {
        code_hash -> Text,
        batch_id -> BigInt,
        redeemed_by -> Nullable<BigInt>,
        redeemed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    distributors (id) {
        id -> BigInt,
        name -> Text,
        contact -> Nullable<Text>,
        tenant -> Nullable<Text>,
        pool_cap -> Nullable<BigInt>,
        pool_cycle -> Nullable<Text>,
        pool_used -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    client_keys (digest) {
        digest -> Text,
        distributor_id -> BigInt,
        names_distributors -> Integer,
        label -> Text,
        created_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    pool_charges (id) {
        id -> BigInt,
        distributor_id -> BigInt,
        cycle -> Text,
        amount -> BigInt,
    }
}

diesel::table! {
    cycle_closings (cycle) {
        cycle -> Text,
        opened_at -> Timestamp,
        closed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    cycle_plans (cycle, user_id) {
        cycle -> Text,
        user_id -> BigInt,
        plan_id -> BigInt,
        distributor_id -> BigInt,
        monthly_price -> Nullable<BigInt>,
    }
}

diesel::joinable!(users -> plans (plan_id));
diesel::joinable!(users -> distributors (distributor_id));
diesel::joinable!(client_keys -> distributors (distributor_id));
diesel::joinable!(plan_models -> plans (plan_id));
diesel::joinable!(plan_roles -> plans (plan_id));
diesel::joinable!(credit_requests -> users (user_id));
diesel::joinable!(redeem_codes -> code_batches (batch_id));
diesel::joinable!(outbox -> credit_requests (credit_request_id));
diesel::joinable!(user_tokens -> users (user_id));
diesel::joinable!(audit_log -> users (user_id));
diesel::joinable!(alerts -> users (user_id));
diesel::joinable!(outbox -> alerts (alert_id));
diesel::joinable!(outbox -> limit_hits (limit_hit_id));
diesel::joinable!(limit_hits -> users (user_id));
diesel::joinable!(balances -> users (user_id));
diesel::joinable!(holds -> users (user_id));
diesel::joinable!(ledger -> users (user_id));
diesel::joinable!(usage_records -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    cycle_closings,
    cycle_plans,
    distributors,
    client_keys,
    pool_charges,
    plans,
    plan_models,
    plan_roles,
    users,
    balances,
    holds,
    ledger,
    usage_records,
    model_weights,
    settings,
    admins,
    instances,
    alerts,
    outbox,
    limit_hits,
    audit_log,
    login_failures,
    user_tokens,
    rate_events,
    credit_requests,
    code_batches,
    redeem_codes,
);
