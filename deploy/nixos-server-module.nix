# services.refstrip-server: the cache side of refstrip (docs/serve.md, "A NixOS cache server").
# A normalized store fed from an upstream binary cache on a timer, served to stock Nix as a
# binary cache, and kept in bounds by gc (retention policy) and repack on another timer. Import
# it in configuration.nix next to (or instead of) the client module, deploy/nixos-module.nix:
#   imports = [ /path/to/refstrip/deploy/nixos-server-module.nix ];
#   services.refstrip-server = {
#     enable = true;
#     package = refstrip;   # bin/refstrip
#     ingest.upstream = "https://cache.example.org";
#     ingest.paths = [ "/nix/store/…-my-system" ];
#   };
{ config, lib, pkgs, ... }:

let
  cfg = config.services.refstrip-server;
  refstrip = "${cfg.package}/bin/refstrip";
  state = "/var/lib/refstrip-server";
  signKey = lib.optional (cfg.signKeyFile != null) "--sign-key ${toString cfg.signKeyFile}";

  # One command per service; every flag is checked against `refstrip CMD --help` by
  # tests/local_store.rs (deployment_files_match_the_command_line).
  serveCommand = lib.concatStringsSep " " ([
    "${refstrip} serve"
    "--from ${lib.escapeShellArg cfg.store}"
    "--listen ${cfg.listen}"
    "--priority ${toString cfg.priority}"
    "--compression ${cfg.compression}"
    "--served-state ${state}/served"
    "--cache /var/cache/refstrip-server --cache-size ${cfg.cacheSize}"
  ] ++ signKey);
  ingestCommand = lib.concatStringsSep " " ([
    "${refstrip} ingest ${lib.escapeShellArg cfg.ingest.upstream}"
    "--to ${lib.escapeShellArg cfg.store}"
  ] ++ lib.optional cfg.ingest.all "--all"
    ++ signKey
    ++ map lib.escapeShellArg cfg.ingest.paths);
  gcCommand = lib.concatStringsSep " " ([
    "${refstrip} gc ${lib.escapeShellArg cfg.store}"
    "--grace ${cfg.gc.grace}"
  ] ++ lib.optionals (cfg.gc.keepWithin != null) [
    "--keep-within ${cfg.gc.keepWithin}"
    "--served-state ${state}/served"
  ]
    ++ lib.optional (cfg.gc.keepNewest != null) "--keep-newest ${toString cfg.gc.keepNewest}"
    ++ lib.optionals (cfg.gc.keep != [ ]) ([ "--keep" ] ++ map lib.escapeShellArg cfg.gc.keep));
  repackCommand = lib.concatStringsSep " " [
    "${refstrip} repack --store ${lib.escapeShellArg cfg.store}"
    "--threshold ${toString cfg.gc.repackThreshold}"
    "--grace ${cfg.gc.grace}"
  ];

  hardening = {
    User = "refstrip";
    Group = "refstrip";
    StateDirectory = "refstrip-server";
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    NoNewPrivileges = true;
  };
in
{
  options.services.refstrip-server = {
    enable = lib.mkEnableOption "the refstrip cache server (ingest, serve, gc)";
    package = lib.mkOption {
      type = lib.types.package;
      description = "The package providing bin/refstrip.";
    };
    store = lib.mkOption {
      type = lib.types.str;
      default = "${state}/store";
      description = "The normalized store: a directory (created by the first ingest) or s3://bucket/prefix.";
    };
    listen = lib.mkOption {
      type = lib.types.str;
      default = ":5000";
      description = "Address serve listens on: ADDR:PORT, or :PORT for all interfaces.";
    };
    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the port of `listen` in the firewall.";
    };
    priority = lib.mkOption {
      type = lib.types.int;
      default = 40;
      description = "Priority announced to Nix (lower is preferred; cache.nixos.org is 40).";
    };
    compression = lib.mkOption {
      type = lib.types.enum [ "none" "zstd" "auto" ];
      default = "none";
      description = "What narinfos advertise: none (ranges, FileSize, FileHash), zstd, or auto (by Accept-Encoding).";
    };
    cacheSize = lib.mkOption {
      type = lib.types.str;
      default = "8G";
      description = "Cap of serve's disk block cache (useful for a store in S3).";
    };
    signKeyFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "Secret key file (nix-store --generate-binary-cache-key) to sign paths with, at ingest and when served.";
    };
    ingest = {
      upstream = lib.mkOption {
        type = lib.types.str;
        example = "https://cache.example.org";
        description = "The binary cache (or Nix store root) to ingest from.";
      };
      paths = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "Store paths to ingest with their closure (an HTTP cache cannot be listed).";
      };
      all = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Ingest every path the upstream has (file:// and s3:// caches, Nix store roots).";
      };
      interval = lib.mkOption {
        type = lib.types.str;
        default = "hourly";
        description = "When to ingest (systemd OnCalendar).";
      };
    };
    gc = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = "Run gc and repack on a timer.";
      };
      interval = lib.mkOption {
        type = lib.types.str;
        default = "daily";
        description = "When to run gc and repack (systemd OnCalendar).";
      };
      keepWithin = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = "30d";
        description = "Keep paths registered or served within this long (with their closure).";
      };
      keepNewest = lib.mkOption {
        type = lib.types.nullOr lib.types.int;
        default = 3;
        description = "Keep the newest N paths of each package (with their closure).";
      };
      keep = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "Store paths always kept (with their closure).";
      };
      repackThreshold = lib.mkOption {
        type = lib.types.float;
        default = 0.5;
        description = "Rewrite packs whose live fraction is below this.";
      };
      grace = lib.mkOption {
        type = lib.types.str;
        default = "24h";
        description = "Delete packs only this long after gc condemned (S3) or repack replaced them.";
      };
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.refstrip = {
      isSystemUser = true;
      group = "refstrip";
    };
    users.groups.refstrip = { };

    systemd.services.refstrip-server = {
      description = "refstrip cache server";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # The store is made by the first ingest.
      unitConfig.ConditionPathExists = lib.mkIf (lib.hasPrefix "/" cfg.store) cfg.store;
      serviceConfig = hardening // {
        ExecStart = serveCommand;
        CacheDirectory = "refstrip-server";
        KillSignal = "SIGTERM";
        TimeoutStopSec = 40;
        Restart = "on-failure";
      };
    };

    systemd.services.refstrip-server-ingest = {
      description = "refstrip: ingest from the upstream cache";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # serve starts once the first ingest has made the store.
      unitConfig.OnSuccess = "refstrip-server.service";
      serviceConfig = hardening // {
        Type = "oneshot";
        ExecStart = ingestCommand;
      };
    };
    systemd.timers.refstrip-server-ingest = {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.ingest.interval;
        Persistent = true;
      };
    };

    systemd.services.refstrip-server-gc = lib.mkIf cfg.gc.enable {
      description = "refstrip: gc by retention policy, then repack";
      # gc refuses while an ingest writes; run after it.
      after = [ "refstrip-server-ingest.service" ];
      serviceConfig = hardening // {
        Type = "oneshot";
        ExecStart = [ gcCommand repackCommand ];
      };
    };
    systemd.timers.refstrip-server-gc = lib.mkIf cfg.gc.enable {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.gc.interval;
        Persistent = true;
      };
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [
      (lib.toInt (lib.last (lib.splitString ":" cfg.listen)))
    ];
  };
}
