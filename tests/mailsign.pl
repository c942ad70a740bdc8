#!/usr/bin/perl
# Signs (DKIM) or seals (ARC) the message on standard input with Mail::DKIM (Debian's
# libmail-dkim-perl): an implementation independent of the dkimpy we verify with.
#
#   mailsign.pl dkim DOMAIN SELECTOR KEYFILE CANONICALIZATION   (e.g. relaxed/simple)
#   mailsign.pl arc DOMAIN SELECTOR KEYFILE SRVID
#
# ARC takes the chain's state from the message's Authentication-Results header of SRVID.
use strict;
use warnings;
use Mail::DKIM::Signer;
use Mail::DKIM::ARC::Signer;
use Mail::DKIM::TextWrap;

my ($mode, $domain, $selector, $keyfile, $option) = @ARGV;
binmode STDIN;
binmode STDOUT;
my $message = do { local $/; <STDIN> };
$message =~ s/\r?\n/\r\n/g;
my $signer;
if ($mode eq 'dkim') {
    $signer = Mail::DKIM::Signer->new(Algorithm => 'rsa-sha256', Method => $option,
        Domain => $domain, Selector => $selector, KeyFile => $keyfile);
} else {
    $signer = Mail::DKIM::ARC::Signer->new(Algorithm => 'rsa-sha256', Domain => $domain,
        SrvId => $option, Selector => $selector, KeyFile => $keyfile, Chain => 'ar',
        Headers => 'from:to:subject:date:message-id');
}
$signer->PRINT($message);
$signer->CLOSE;
my @fields = $mode eq 'dkim' ? ($signer->signature->as_string) : ($signer->as_strings);
die "no signature: " . ($signer->{result} // '') . "\n" unless @fields;
print join("\r\n", @fields), "\r\n", $message;
