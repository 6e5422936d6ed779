-- $1 users with realistic emails and names, as the Management API and the sync would leave
-- them: 239 first names and 263 last names from several languages (accents, apostrophes,
-- particles), eight email shapes over 30 domains weighted towards gmail.com, about 1% without an
-- email and 1% without a name, 30% Google accounts. Deterministic (setseed runs first).
WITH first AS (SELECT ARRAY['James','Mary','John','Patricia','Robert','Jennifer','Michael','Linda','William','Elizabeth','David','Barbara','Richard','Susan','Joseph','Jessica','Thomas','Sarah','Charles','Karen','Christopher','Nancy','Daniel','Lisa','Matthew','Betty','Anthony','Margaret','Mark','Sandra','Donald','Ashley','Steven','Kimberly','Paul','Emily','Andrew','Donna','Joshua','Michelle','Kenneth','Dorothy','Kevin','Carol','Brian','Amanda','George','Melissa','Edward','Deborah','Ronald','Stephanie','Timothy','Rebecca','Jason','Sharon','Jeffrey','Laura','Ryan','Cynthia','Jacob','Kathleen','Gary','Amy','Nicholas','Shirley','Eric','Angela','Jonathan','Helen','Stephen','Anna','Larry','Brenda','Justin','Pamela','Scott','Nicole','Brandon','Emma','Benjamin','Samantha','Samuel','Katherine','Gregory','Christine','Frank','Debra','Alexander','Rachel','Raymond','Catherine','Patrick','Carolyn','Jack','Janet','Dennis','Ruth','Jerry','Maria','Tyler','Heather','Aaron','Diane','Jose','Virginia','Adam','Julie','Henry','Joyce','Nathan','Victoria','Douglas','Olivia','Zachary','Kelly','Peter','Christina','Kyle','Lauren','Walter','Joan','Ethan','Evelyn','Jeremy','Judith','Harold','Megan','Keith','Cheryl','Christian','Andrea','Roger','Hannah','Noah','Martha','Gerald','Jacqueline','Carl','Frances','Terry','Gloria','Sean','Ann','Austin','Teresa','Arthur','Kathryn','Lawrence','Sara','Jesse','Janice','Dylan','Jean','Bryan','Alice','Joe','Madison','Jordan','Doris','Billy','Abigail','Bruce','Julia','Albert','Judy','Willie','Grace','Gabriel','Denise','Logan','Amber','Alan','Marilyn','Juan','Beverly','Wayne','Danielle','Roy','Theresa','Ralph','Sophia','Randy','Marie','Eugene','Diana','Vincent','Brittany','Russell','Natalie','Elijah','Isabella','Louis','Charlotte','Bobby','Rose','Philip','Alexis','Johnny','Kayla','Wei','Yuki','Priya','Arjun','Chen','Mohammed','Fatima','Ali','Olga','Ivan','Sven','Ingrid','Pierre','Amélie','Jürgen','Zoë','Łukasz','Søren','Björn','José','Ngozi','Kwame','Aiko','Hiroshi','Mei','Rahul','Ananya','Lars','Astrid','Matteo','Giulia','Diego','Lucía','Thiago','Camila','Oluwaseun','Xin','Dmitri','Anastasia'] AS a),
     last AS (SELECT ARRAY['Smith','Johnson','Williams','Brown','Jones','Garcia','Miller','Davis','Rodriguez','Martinez','Hernandez','Lopez','Gonzalez','Wilson','Anderson','Thomas','Taylor','Moore','Jackson','Martin','Lee','Perez','Thompson','White','Harris','Sanchez','Clark','Ramirez','Lewis','Robinson','Walker','Young','Allen','King','Wright','Scott','Torres','Nguyen','Hill','Flores','Green','Adams','Nelson','Baker','Hall','Rivera','Campbell','Mitchell','Carter','Roberts','Gomez','Phillips','Evans','Turner','Diaz','Parker','Cruz','Edwards','Collins','Reyes','Stewart','Morris','Morales','Murphy','Cook','Rogers','Gutierrez','Ortiz','Morgan','Cooper','Peterson','Bailey','Reed','Kelly','Howard','Ramos','Kim','Cox','Ward','Richardson','Watson','Brooks','Chavez','Wood','James','Bennett','Gray','Mendoza','Ruiz','Hughes','Price','Alvarez','Castillo','Sanders','Patel','Myers','Long','Ross','Foster','Jimenez','Powell','Jenkins','Perry','Russell','Sullivan','Bell','Coleman','Butler','Henderson','Barnes','Gonzales','Fisher','Vasquez','Simmons','Romero','Jordan','Patterson','Alexander','Hamilton','Graham','Reynolds','Griffin','Wallace','Moreno','West','Cole','Hayes','Bryant','Herrera','Gibson','Ellis','Tran','Medina','Aguilar','Stevens','Murray','Ford','Castro','Marshall','Owens','Harrison','Fernandez','McDonald','Woods','Washington','Kennedy','Wells','Vargas','Henry','Chen','Freeman','Webb','Tucker','Guzman','Burns','Crawford','Olson','Simpson','Porter','Hunter','Gordon','Mendez','Silva','Shaw','Snyder','Mason','Dixon','Muñoz','Hunt','Hicks','Holmes','Palmer','Wagner','Black','Robertson','Boyd','Rose','Stone','Salazar','Fox','Warren','Mills','Meyer','Rice','Schmidt','Garza','Daniels','Ferguson','Nichols','Stephens','Soto','Weaver','Ryan','Gardner','Payne','Grant','Dunn','Kelley','Spencer','Hawkins','Arnold','Pierce','Hansen','Peters','Santos','Hart','Bradley','Knight','Elliott','Cunningham','Duncan','Armstrong','Hudson','Carroll','Lane','Riley','Andrews','Ray','Berry','Perkins','Hoffman','Johnston','Matthews','Peña','Richards','Willis','Carpenter','Lawrence','Sandoval','Müller','Schneider','Fischer','Weber','Becker','Dubois','Lefèvre','Rossi','Russo','Kowalski','Nowak','Ivanov','Petrov','Yamamoto','Tanaka','Suzuki','Wang','Li','Zhang','Liu','Singh','Kumar','Sharma','Okafor','Mensah','Nielsen','Jensen','Andersson','Johansson','Öztürk','Yılmaz','O''Brien','van der Berg','de Jong'] AS a),
     domains AS (SELECT ARRAY['gmail.com','gmail.com','gmail.com','gmail.com','gmail.com','gmail.com','yahoo.com','yahoo.com','outlook.com','outlook.com','hotmail.com','icloud.com','proton.me','aol.com','gmx.de','web.de','yandex.ru','qq.com','163.com','orange.fr','libero.it','example.org','acme-corp.com','globex.io','initech.net','umbrella.co','hooli.xyz','stark-industries.com','wayne.enterprises','university.edu'] AS a),
     gen AS (
       SELECT n,
              (SELECT a FROM first)[1 + floor(random() * array_length((SELECT a FROM first), 1))::int] AS f,
              (SELECT a FROM last)[1 + floor(random() * array_length((SELECT a FROM last), 1))::int] AS l,
              (SELECT a FROM domains)[1 + floor(random() * array_length((SELECT a FROM domains), 1))::int] AS d,
              floor(random() * 8)::int AS pattern,
              floor(random() * 100)::int AS r
       FROM generate_series(1, $1) AS n
     ),
     shaped AS (
       SELECT n, f, l, d, r,
              lower(translate(CASE pattern
                WHEN 0 THEN f || '.' || l
                WHEN 1 THEN f || l
                WHEN 2 THEN left(f, 1) || l
                WHEN 3 THEN f || '_' || l || (n % 100)
                WHEN 4 THEN f || (n % 10000)
                WHEN 5 THEN l || '.' || f
                WHEN 6 THEN f || '.' || l || (1950 + n % 60)
                ELSE left(f, 1) || left(l, 1) || (n % 100000) END, ' ''', '')) || '@' || d AS email
       FROM gen
     )
INSERT INTO users (user_id, email, email_verified, name, nickname, picture, blocked, logins_count,
                   last_login, auth0_created_at, auth0_updated_at, app_metadata, user_metadata, identities, raw, synced_at)
SELECT CASE WHEN r < 70 THEN 'auth0|' ELSE 'google-oauth2|' END || md5(n::text),
       CASE WHEN r = 99 THEN NULL ELSE email END,
       r < 80,
       CASE WHEN r = 98 THEN NULL ELSE f || ' ' || l END,
       lower(f),
       'https://s.gravatar.com/avatar/' || md5(email) || '?s=480',
       r = 97,
       r * 3,
       now() - (n % 1000) * interval '1 hour',
       now() - (n % 2000) * interval '1 day',
       now() - (n % 500) * interval '1 hour',
       '{}'::jsonb, '{}'::jsonb,
       jsonb_build_array(jsonb_build_object('connection', CASE WHEN r < 70 THEN 'Username-Password-Authentication' ELSE 'google-oauth2' END, 'provider', CASE WHEN r < 70 THEN 'auth0' ELSE 'google-oauth2' END, 'user_id', md5(n::text), 'isSocial', r >= 70)),
       jsonb_build_object('user_id', CASE WHEN r < 70 THEN 'auth0|' ELSE 'google-oauth2|' END || md5(n::text), 'email', email, 'name', f || ' ' || l, 'nickname', lower(f), 'created_at', now(), 'updated_at', now(), 'logins_count', r * 3),
       now()
FROM shaped;
