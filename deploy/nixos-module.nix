# services.refstrip-substituter: a local binary cache for this machine's Nix that draws objects
# from the Nix store it already has, then a bounded disk cache, then the upstream normalized store
# (docs/client.md). Import it in configuration.nix:
#   imports = [ /path/to/refstrip/deploy/nixos-module.nix ];
#   services.refstrip-substituter = { enable = true; upstream = "https://cache.example/refstrip"; };
{ config, lib, pkgs, ... }:

let
  cfg = config.services.refstrip-substituter;
in
{
  options.services.refstrip-substituter = {
    enable = lib.mkEnableOption "the refstrip local substituter";
    package = lib.mkOption {
      type = lib.types.package;
      description = "The package providing bin/refstrip.";
    };
    upstream = lib.mkOption {
      type = lib.types.str;
      example = "https://cache.example/refstrip";
      description = "The normalized store to fetch from (http(s)://, s3://, or a directory).";
    };
    port = lib.mkOption {
      type = lib.types.port;
      default = 37515;
      description = "Loopback port Nix substitutes from.";
    };
    cacheSize = lib.mkOption {
      type = lib.types.str;
      default = "8G";
      description = "Cap of the disk block cache (least recently used blocks are evicted beyond it).";
    };
    priority = lib.mkOption {
      type = lib.types.int;
      default = 30;
      description = "Priority announced to Nix (lower is preferred; cache.nixos.org is 40).";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.refstrip-substituter = {
      description = "refstrip local substituter";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = {
        ExecStart = lib.concatStringsSep " " [
          "${cfg.package}/bin/refstrip serve"
          "--from ${lib.escapeShellArg cfg.upstream}"
          "--local-store / --local-state /var/lib/refstrip-substituter"
          "--cache /var/cache/refstrip-substituter --cache-size ${cfg.cacheSize}"
          "--listen 127.0.0.1:${toString cfg.port} --priority ${toString cfg.priority}"
        ];
        DynamicUser = true;
        StateDirectory = "refstrip-substituter";
        CacheDirectory = "refstrip-substituter";
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        NoNewPrivileges = true;
        Restart = "on-failure";
      };
    };
    # Tried first; Nix falls through to the next substituter on a 404 or an error.
    nix.settings.substituters = lib.mkBefore [ "http://127.0.0.1:${toString cfg.port}" ];
  };
}
