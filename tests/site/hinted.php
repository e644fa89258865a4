<?php
// A page that names what it needs in Link headers, as WordPress's and
// Laravel's preload plugins do: each ?link[]= is one Link field; ?pause=
// milliseconds of work before the page is sent.
foreach ($_GET['link'] ?? [] as $link) {
    header('Link: ' . $link, false);
}
if (isset($_GET['pause'])) {
    usleep((int) $_GET['pause'] * 1000);
}
echo "<!DOCTYPE html><html><head><link rel=\"stylesheet\" href=\"/style.css\"></head>";
echo "<body><p>hinted page</p></body></html>\n";
