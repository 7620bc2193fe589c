# The NixOS module (services.peerix); written by the deployment issue.
{ ... }:
{
}
