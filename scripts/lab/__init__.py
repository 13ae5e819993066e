"""The one-host lab (network namespaces, the demo service, the traffic generator), installed as
package data so `shadowtap lab` works from an installed package."""
